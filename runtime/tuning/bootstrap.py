"""Bootstrap intervals for the yardstick's and the tuner's metrics: resample the samples with replacement, take
percentiles.

Efron & Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13 (the percentile interval) and
ch. 10 (the bootstrap estimate of bias). One seeded generator draws every resample, so an interval is
reproducible, and the same seed gives the same resamples to both metrics and to every setting of a
run (whose samples share their seeds, so sample i of one row is paired with sample i of another).

Class accuracy and the paired fidelity (runtime.tuning.fidelity) are means over samples or pairs, which
resampling does not bias: their interval is the plain percentile one.
The Fréchet distance is biased upwards by the noise of the sample covariance, and a resample (about
63% distinct samples) is noisier still: its replicates sit above the estimate by about that bias
again (1,000 real training images: estimate 1.50, percentile interval [2.76, 4.79]). So
its percentile interval is moved down by the bootstrap's own estimate of that bias (mean replicate
minus estimate), which centres it on what another set of seeds of the same size would give.
"""

import numpy as np

from runtime.tuning.frechet import frechet_distance, frechet_distances, statistics

LEVEL = 0.95
CHUNK_VALUES = 4_000_000  # resampled feature values held at once (32 MB of float64): bounds memory, not results


def resample_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) int64: each row n draws with replacement from range(n), from one seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_bounds(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 percentiles of the bootstrap replicates."""
    low, high = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def bias_corrected_bounds(estimate: float, replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """percentile_bounds moved by the bootstrap's bias estimate, mean(replicates) - estimate."""
    low, high = percentile_bounds(replicates, level)
    shift = float(np.mean(replicates)) - estimate
    return low - shift, high - shift


def mean_interval(values, resamples: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of per-sample values (N,): outcomes (bools or 0/1) for an accuracy,
    one PSNR or SSIM per pair for a paired fidelity."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)  # (N,)
    means = values[resample_indices(len(values), resamples, seed)].mean(1)  # (resamples,)
    return percentile_bounds(means, level)


def frechet_replicates(features: np.ndarray, mu, sigma, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples,) Fréchet distances of resampled features (N, F) to the Gaussian (mu, sigma)."""
    n, dim = features.shape
    rows = resample_indices(n, resamples, seed)  # (resamples, N)
    chunk = max(1, CHUNK_VALUES // (n * dim))
    distances = []
    for start in range(0, resamples, chunk):
        x = features[rows[start:start + chunk]]  # (B, N, F)
        means = x.mean(1)  # (B, F)
        centred = x - means[:, None, :]
        covariances = centred.transpose(0, 2, 1) @ centred / (n - 1)  # (B, F, F), as np.cov
        distances.append(frechet_distances(means, covariances, mu, sigma))
    return np.concatenate(distances)


def frechet_interval(features: np.ndarray, mu, sigma, resamples: int = 1000, seed: int = 0,
                     level: float = LEVEL) -> tuple[float, float]:
    """Bias-corrected percentile interval of the Fréchet distance of features (N, F) to (mu, sigma)."""
    estimate = frechet_distance(*statistics(features), mu, sigma)
    low, high = bias_corrected_bounds(estimate, frechet_replicates(features, mu, sigma, resamples, seed), level)
    return max(low, 0.0), high
