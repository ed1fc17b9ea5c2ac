"""The yardstick (benchmarks/quality.py): bootstrap intervals on cases with a known answer, the Pareto front,
the table, the plot, the settings and the CLI, and a tiny run of the whole thing on the shipped model.

Known answers: a Bernoulli(p) mean has standard error sqrt(p (1 - p) / N), so a 95% interval is about
2 * 1.96 * sqrt(p (1 - p) / N) wide; features N(mu, I) against statistics N(0, I) have Fréchet distance
|mu|^2, whose estimate from N samples has standard error about 2 |mu| / sqrt(N) (the delta method on
|mean|^2; the covariance term's spread is of order d / N, negligible for small d).
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import quality
from benchmarks.bootstrap import (accuracy_interval, bias_corrected_bounds, frechet_interval, frechet_replicates,
                                  percentile_bounds, resample_indices)
from benchmarks.fashion_classifier import frechet_distance, frechet_distances, statistics
from benchmarks.frontier import merge, pareto_front, plot_frontier
from benchmarks.quality import Setting
from dit_ref import DiTError, fashion_mnist

Z = 1.959964  # the standard normal's 97.5% quantile


def test_accuracy_interval_of_bernoulli_outcomes_has_the_binomial_width_and_covers_p():
    p, n = 0.9, 2000
    correct = np.random.default_rng(0).random(n) < p  # (N,) bool
    low, high = accuracy_interval(correct, resamples=1000, seed=0)
    estimate = correct.mean()
    expected_width = 2 * Z * np.sqrt(estimate * (1 - estimate) / n)
    print(f"p {p}, N {n}: estimate {estimate:.4f}, interval [{low:.4f}, {high:.4f}], width {high - low:.4f} "
          f"against 2 * 1.96 * sqrt(p(1-p)/N) = {expected_width:.4f}")
    assert low <= p <= high and low <= estimate <= high
    assert high - low == pytest.approx(expected_width, rel=0.10)  # percentile noise at 1,000 resamples: ~3%
    assert accuracy_interval(correct, 1000, seed=0) == (low, high)  # seeded: reproducible
    assert accuracy_interval(correct, 1000, seed=1) != (low, high)


def test_accuracy_interval_covers_p_about_95_percent_of_the_time():
    p, n, trials = 0.85, 400, 200
    rng = np.random.default_rng(1)
    covered = sum(low <= p <= high for low, high in
                  (accuracy_interval(rng.random(n) < p, resamples=1000, seed=k) for k in range(trials)))
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
    from benchmarks import fashion_classifier

    images, _ = fashion_mnist.load("train")
    model = fashion_classifier.load_classifier()
    mu, sigma = fashion_classifier.load_test_statistics()
    features = fashion_classifier.features(model, images[np.random.default_rng(1).choice(len(images), 1000, False)])
    estimate = frechet_distance(*statistics(features), mu, sigma)
    replicates = frechet_replicates(features, mu, sigma, 200, seed=0)
    plain, (low, high) = percentile_bounds(replicates), bias_corrected_bounds(estimate, replicates)
    print(f"1,000 training images: FD {estimate:.2f}, plain percentile [{plain[0]:.2f}, {plain[1]:.2f}], "
          f"bias-corrected [{low:.2f}, {high:.2f}]")
    assert plain[0] > estimate  # the plain interval does not even hold its own estimate
    assert low < estimate < high and high - low < 2 * (plain[1] - plain[0])


def test_pareto_front():
    # (s/image, accuracy): c is slower and worse than b; d is the fastest; a ties b's speed but is better.
    costs, accuracies = [1.0, 1.0, 2.0, 0.1, 3.0], [0.9, 0.8, 0.7, 0.5, 0.95]
    assert pareto_front(costs, accuracies) == [True, False, False, True, True]
    distances = [50.0, 60.0, 70.0, 90.0, 40.0]  # lower is better: the same front
    assert pareto_front(costs, distances, higher_is_better=False) == [True, False, False, True, True]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # equal points do not dominate each other


def row(name, seconds, accuracy, distance, n=1000):
    return {"name": name, "backend": "onnxruntime", "precision": "fp16", "sampler": "ddim", "steps": 25,
            "cfg_scale": 4.0, "load_options": {}, "options": {}, "n": n, "class_accuracy": accuracy,
            "class_accuracy_interval": (accuracy - 0.02, accuracy + 0.018), "frechet_distance": distance,
            "frechet_distance_interval": (distance - 3.0, distance + 4.0), "seconds_per_image": seconds}


def test_table_line_reads_estimate_and_interval():
    line = quality.table_line({**row("onnxruntime-fp16-ddim25", 0.1084, 0.915, 50.76),
                               "class_accuracy_interval": (0.896, 0.933), "options": {"cache": "none"}})
    print(line)
    assert line == ("| onnxruntime-fp16-ddim25 | onnxruntime | FP16 | ddim | 25 | 4 | cache=none | 1000 | "
                    "91.5% [89.6, 93.3] | 50.8 [47.8, 54.8] | 0.108 |")
    assert quality.table([row("a", 1, 0.5, 9)]).splitlines()[0] == quality.HEADER[0]


def test_plot_frontier_writes_a_png(tmp_path):
    rows = [row("slow-good", 1.0, 0.92, 50.0), row("fast-bad", 0.1, 0.85, 60.0), row("dominated", 0.5, 0.80, 70.0)]
    report = {"model": "fashion", "machine": "test CPU", "date": "2026-12-02", "note": quality.SPEED_NOTE, "rows": rows}
    path = tmp_path / "frontier.png"
    plot_frontier(report, path)
    print(f"{path.stat().st_size} bytes")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["frontier.png"]  # no temporary left beside it


def test_runs_merge_into_one_frontier_and_foreign_runs_are_refused():
    base = {"model": "fashion", "machine": "test CPU", "date": "2026-12-02", "note": quality.SPEED_NOTE,
            "per_class": 100, "seed": 0, "versions": {"torch": "2.13.0"}}
    first = {**base, "rows": [row("a", 1.0, 0.9, 50.0)]}
    second = {**base, "rows": [row("b", 0.5, 0.8, 60.0), row("c", 0.2, 0.7, 70.0)]}
    merged = merge([first, second])
    print(merged["note"])
    assert [(r["name"], r["run"]) for r in merged["rows"]] == [("a", 1), ("b", 2), ("c", 2)]
    assert merged["runs"] == 2 and "2 runs" in merged["note"]
    with pytest.raises(ValueError, match="differ in machine"):
        merge([first, {**second, "machine": "another CPU"}])


def test_default_settings_have_unique_names_and_are_valid():
    names = [setting.name for setting in quality.SETTINGS.values()]
    assert len(set(names)) == len(names) == 41 and list(quality.SETTINGS) == names
    for setting in quality.SETTINGS.values():
        quality.check_setting(setting)
    assert quality.select_settings(None) == list(quality.SETTINGS.values())
    assert [s.name for s in quality.select_settings("onnxruntime-fp16-ddim25, torch-ddpm250")] == [
        "onnxruntime-fp16-ddim25", "torch-ddpm250"]
    with pytest.raises(DiTError, match="unknown setting nope; choose from torch-ddpm250"):
        quality.select_settings("torch-ddpm250,nope")


@pytest.mark.parametrize("setting, message", [
    (Setting("x", "torch", "fp32", "ddim", 5, 4.0, load_options={"cuda_graphs": True}), "takes no option 'cuda_graphs'"),
    (Setting("x", "torch", "fp32", "ddim", 5, 4.0, options={"seed": 3}), "'seed' is fixed by the run"),
    (Setting("x", "torch", "fp32", "ddim", 5, 4.0, options={"cache_policy": "x"}), "generate\\(\\) takes no option"),
    (Setting("x", "no-such-backend", "int8", "ddim", 5, 4.0), "unknown backend .no-such-backend."),
    (Setting("x", "torch", "fp32", "no-such-sampler", 5, 4.0), "no-such-sampler"),
])
def test_check_setting_refuses_what_would_fail_later(setting, message):
    with pytest.raises(DiTError, match=message):
        quality.check_setting(setting)


TINY = Setting("tiny-torch-ddim4", "torch", "fp32", "ddim", 4, 4.0)


@pytest.fixture(scope="module")
def reference():
    from runtime.backends import load_denoiser

    return load_denoiser(None, "torch", model="fashion", ckpt="auto", device="cpu", threads=1)


def test_samples_do_not_depend_on_the_batch_and_options_reach_generate(reference):
    from runtime.sampling import sampler_from_name

    labels, sampler = quality.balanced_labels(1), sampler_from_name("ddim", 4)
    whole, _ = quality.sample(reference, labels, sampler, 4.0, seed=0)
    in_threes, seconds = quality.sample(reference, labels, sampler, 4.0, seed=0, options={"batch_size": 3})
    print(f"10 samples, DDIM 4, batches of 3: {seconds:.2f} s; max difference {np.abs(whole - in_threes).max():.2e}")
    assert whole.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(whole, in_threes, atol=2e-4)  # the same noise; batched kernels round apart (3e-5)
    other_seed, _ = quality.sample(reference, labels, sampler, 4.0, seed=1)
    assert np.abs(whole - other_seed).max() > 0.5
    estimates, with_intervals = quality.score_samples(whole, labels, None), quality.score_samples(whole, labels, 200)
    print(f"estimates alone: {estimates}")
    assert set(estimates) == {"n", "class_accuracy", "frechet_distance"}
    assert with_intervals == {**with_intervals, **estimates}  # the same estimates, intervals added


def test_cli_runs_a_tiny_setting_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setitem(quality.SETTINGS, TINY.name, TINY)
    json_path, plot_path = tmp_path / "run.json", tmp_path / "run.png"
    result = CliRunner().invoke(quality.main, ["--settings", TINY.name, "--per-class", "2", "--resamples", "200",
                                               "--threads", "1", "--work-dir", str(tmp_path / "graphs"),
                                               "--json", str(json_path), "--plot", str(plot_path)])
    print(result.output)
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    (only,) = report["rows"]
    assert report["per_class"] == 2 and report["seeding"] == "per-sample" and report["versions"]["torch"]
    assert only["name"] == TINY.name and only["n"] == 20 and only["seconds_per_image"] > 0
    for key in ("class_accuracy", "frechet_distance"):
        low, high = only[f"{key}_interval"]
        assert low <= only[key] <= high, key
    assert 0.3 <= only["class_accuracy"] <= 1.0  # 4 DDIM steps at cfg 4 already draw most classes
    assert "| tiny-torch-ddim4 | torch | FP32 | ddim | 4 | 4 | - | 20 |" in result.output
    assert "compare it between rows of one run only" in result.output and plot_path.stat().st_size > 20_000


def test_cli_errors_are_one_line():
    runner = CliRunner()
    result = runner.invoke(quality.main, ["--settings", "nope"])
    print(result.output)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("error: unknown setting")
    listed = runner.invoke(quality.main, ["--list-settings"])
    assert listed.exit_code == 0 and all(name in listed.output for name in quality.SETTINGS)
    assert "--per-class" in runner.invoke(quality.main, ["--help"]).output
