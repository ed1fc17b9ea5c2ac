"""Bootstrap intervals (runtime.tuning.bootstrap) on cases with a known answer.

Known answers: a Bernoulli(p) mean has standard error sqrt(p (1 - p) / N), so a 95% interval is about
2 * 1.96 * sqrt(p (1 - p) / N) wide; features N(mu, I) against statistics N(0, I) have Fréchet distance
|mu|^2, whose estimate from N samples has standard error about 2 |mu| / sqrt(N) (the delta method on
|mean|^2; the covariance term's spread is of order d / N, negligible for small d).
"""

import numpy as np
import pytest

from dit_ref import DiTError, fashion_mnist
from runtime.tuning import judge
from runtime.tuning.bootstrap import (bias_corrected_bounds, frechet_interval, frechet_replicates, mean_interval,
                                      percentile_bounds, resample_indices)
from runtime.tuning.frechet import frechet_distance, frechet_distances, statistics

Z = 1.959964  # the standard normal's 97.5% quantile


def test_mean_interval_of_bernoulli_outcomes_has_the_binomial_width_and_covers_p():
    p, n = 0.9, 2000
    correct = np.random.default_rng(0).random(n) < p  # (N,) bool
    low, high = mean_interval(correct, resamples=1000, seed=0)
    estimate = correct.mean()
    expected_width = 2 * Z * np.sqrt(estimate * (1 - estimate) / n)
    print(f"p {p}, N {n}: estimate {estimate:.4f}, interval [{low:.4f}, {high:.4f}], width {high - low:.4f} "
          f"against 2 * 1.96 * sqrt(p(1-p)/N) = {expected_width:.4f}")
    assert low <= p <= high and low <= estimate <= high
    assert high - low == pytest.approx(expected_width, rel=0.10)  # percentile noise at 1,000 resamples: ~3%
    assert mean_interval(correct, 1000, seed=0) == (low, high)  # seeded: reproducible
    assert mean_interval(correct, 1000, seed=1) != (low, high)


def test_mean_interval_covers_p_about_95_percent_of_the_time():
    p, n, trials = 0.85, 400, 200
    rng = np.random.default_rng(1)
    covered = sum(low <= p <= high for low, high in
                  (mean_interval(rng.random(n) < p, resamples=1000, seed=k) for k in range(trials)))
    print(f"coverage of p = {p} over {trials} data sets of N = {n}: {covered / trials:.3f} (nominal 0.95)")
    assert 0.90 <= covered / trials <= 0.99  # binomial spread of the count: sd 0.015 around 0.95


def test_frechet_interval_of_gaussian_features_covers_the_known_distance_with_the_delta_method_width():
    mu, n = np.array([1.0, 1.0, 0.0, 0.0]), 10_000  # FD(N(mu, I), N(0, I)) = |mu|^2 = 2
    features = mu + np.random.default_rng(0).standard_normal((n, len(mu)))  # (N, 4)
    estimate = frechet_distance(*statistics(features), np.zeros(4), np.eye(4))
    low, high = frechet_interval(features, np.zeros(4), np.eye(4), resamples=1000, seed=0)
    expected_width = 2 * Z * 2 * np.linalg.norm(mu) / np.sqrt(n)
    print(f"FD true {mu @ mu:.3f}, estimate {estimate:.4f}, interval [{low:.4f}, {high:.4f}], width {high - low:.4f} "
          f"against the delta method's {expected_width:.4f}")
    assert low <= mu @ mu <= high and low <= estimate <= high
    assert high - low == pytest.approx(expected_width, rel=0.15)


def test_frechet_replicates_are_frechet_distance_of_each_resample():
    rng = np.random.default_rng(3)
    features, mu = rng.standard_normal((300, 24)), rng.standard_normal(24)
    a = rng.standard_normal((24, 24))
    sigma = a @ a.T / 24 + 0.1 * np.eye(24)
    batched = frechet_replicates(features, mu, sigma, 50, seed=4)
    one_by_one = [frechet_distance(*statistics(features[rows]), mu, sigma) for rows in resample_indices(300, 50, 4)]
    error = np.max(np.abs(batched - one_by_one) / np.abs(one_by_one))
    print(f"batched replicates against frechet_distance, 50 resamples: max relative difference {error:.1e}")
    assert error < 1e-9
    assert frechet_distances(mu[None], sigma[None], mu, sigma)[0] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(DiTError, match="mismatched statistics"):
        frechet_distances(mu[None], sigma, mu, sigma)


def test_frechet_interval_is_bias_corrected_where_the_plain_percentile_one_misses():
    # 32-d features from 200 samples: the estimate sits above |mu|^2 = 8 by the covariance noise, and a
    # resample's replicates sit above the estimate by about that much again. The interval's target is
    # what another draw of 200 would give: the mean estimate over independent draws.
    d, n, draws, mu = 32, 200, 20, np.full(32, 0.5)
    rng = np.random.default_rng(2)
    data = [mu + rng.standard_normal((n, d)) for _ in range(draws)]
    estimates = [frechet_distance(*statistics(f), np.zeros(d), np.eye(d)) for f in data]
    target = np.mean(estimates)
    plain = corrected = 0
    for k, (features, estimate) in enumerate(zip(data, estimates)):
        replicates = frechet_replicates(features, np.zeros(d), np.eye(d), 200, seed=k)
        plain_low, plain_high = percentile_bounds(replicates)
        low, high = bias_corrected_bounds(estimate, replicates)
        plain += plain_low <= target <= plain_high
        corrected += low <= target <= high
    print(f"|mu|^2 {mu @ mu:.1f}, mean estimate at N = {n}: {target:.2f}; coverage of it over {draws} draws: "
          f"plain percentile {plain}/{draws}, bias-corrected {corrected}/{draws}")
    assert corrected >= 0.8 * draws and plain <= 0.5 * draws


@pytest.mark.skipif(not (fashion_mnist.DATA_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST not in {fashion_mnist.DATA_DIR}; apt-get install dataset-fashion-mnist")
def test_frechet_interval_of_real_images_holds_its_estimate():
    images, _ = fashion_mnist.load("train")
    shipped = judge.fashion_judge()
    mu, sigma = shipped.reference_statistics()
    features = shipped.features(images[np.random.default_rng(1).choice(len(images), 1000, False)])
    estimate = frechet_distance(*statistics(features), mu, sigma)
    replicates = frechet_replicates(features, mu, sigma, 200, seed=0)
    plain, (low, high) = percentile_bounds(replicates), bias_corrected_bounds(estimate, replicates)
    print(f"1,000 training images: FD {estimate:.2f}, plain percentile [{plain[0]:.2f}, {plain[1]:.2f}], "
          f"bias-corrected [{low:.2f}, {high:.2f}]")
    assert plain[0] > estimate  # the plain interval does not even hold its own estimate
    assert low < estimate < high and high - low < 2 * (plain[1] - plain[0])
