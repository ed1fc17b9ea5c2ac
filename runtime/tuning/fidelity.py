"""Paired fidelity: each sample against the reference sample of the same seed and label, PSNR and SSIM per pair.

A population measure (class accuracy, a feature distance) asks whether a set of pictures looks like the
real thing; it cannot see a setting that draws different pictures of equal quality, and its intervals
over 1,000 samples are wide (about ±2 points, ±8%). Two settings run from the same seed start from the
same noise, so their pictures of sample i can be compared directly: the paired distance is small when
the setting follows the reference's trajectory and grows with how far it strays. Pure numpy functions
(SSIM from scikit-image).

What is compared:
  - decoded images: uint8 (N, H, W, C) as dit-run writes them, data range 255 (a pixel model's only form);
  - latents (N, C, L, L) float, for latent models (with random decoder weights the decoded pixels say
    nothing). Their data range is per pair: R_i = max - min of reference i's latents, so a pair's PSNR
    depends on that pair alone and not on which other pairs are in the set.

PSNR_i = 10 log10(R_i^2 / MSE_i), MSE_i the mean squared difference over all of pair i's elements. An
identical pair has an infinite PSNR; every pair is capped at PSNR_CEILING_DB, so a mean over pairs stays
finite and a run reports how many pairs sit at the ceiling (a uint8 28 x 28 pair one level apart in one
pixel is at 77 dB; two float32 runs that differ by rounding are near 120 dB). SSIM_i is Wang et al.'s
("Image quality assessment: from error visibility to structural similarity", 2004): Gaussian window of
sigma 1.5, K1 0.01, K2 0.03, with the same data range, the mean over channels for a multi-channel image
or latent. Each is summarised over pairs as the mean (of the per-pair dB values) with a 95% bootstrap
interval, and the 10th percentile: the bad pairs a mean hides.
"""

import numpy as np

from dit_ref.errors import DiTError
from runtime.tuning.bootstrap import LEVEL, mean_interval

PSNR_CEILING_DB = 100.0  # an identical pair counts as this; far above any difference a setting makes
IMAGE_RANGE = 255.0  # uint8 images
LOW_PERCENTILE = 10  # the summary's low percentile: one pair in ten is worse
SSIM_OPTIONS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}  # Wang et al. 2004


def check_pairs(candidate: np.ndarray, reference: np.ndarray, what: str) -> None:
    """DiTError unless candidate and reference are N >= 1 samples of the same shape."""
    if candidate.shape != reference.shape or candidate.ndim != 4 or len(candidate) == 0:
        raise DiTError(f"paired {what} need candidate and reference of one shape (N, ...), N >= 1; got "
                       f"{candidate.shape} and {reference.shape}: make both from the same seeds and labels")


def psnr(candidate: np.ndarray, reference: np.ndarray, data_range) -> np.ndarray:
    """(N,) PSNR in dB of each pair, capped at PSNR_CEILING_DB; data_range a number or one per pair (N,)."""
    difference = candidate.reshape(len(candidate), -1).astype(np.float64) - reference.reshape(len(reference), -1)
    mse = np.mean(difference ** 2, axis=1)  # (N,)
    peak = np.broadcast_to(np.asarray(data_range, dtype=np.float64), mse.shape) ** 2  # (N,)
    with np.errstate(divide="ignore"):
        decibels = 10.0 * np.log10(peak / mse)  # inf where a pair is identical
    return np.minimum(decibels, PSNR_CEILING_DB)


def ssim(candidate: np.ndarray, reference: np.ndarray, data_range, channel_axis: int) -> np.ndarray:
    """(N,) SSIM of each pair (channel_axis: the channels' axis within one sample); data_range as psnr's."""
    from skimage.metrics import structural_similarity

    ranges = np.broadcast_to(np.asarray(data_range, dtype=np.float64), (len(candidate),))
    return np.array([structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=float(r),
                                           channel_axis=channel_axis, **SSIM_OPTIONS)
                     for a, b, r in zip(candidate, reference, ranges)])


def latent_range(reference: np.ndarray) -> np.ndarray:
    """(N,) the data range of each reference sample's latents: max - min over all its elements."""
    flat = reference.reshape(len(reference), -1)
    return (flat.max(1) - flat.min(1)).astype(np.float64)


def image_pairs(candidate: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """{"psnr", "ssim"}: (N,) each, of uint8 images (N, H, W, C) against their references (range 255)."""
    check_pairs(candidate, reference, "images")
    if candidate.dtype != np.uint8 or reference.dtype != np.uint8:
        raise DiTError(f"paired images must be uint8 (N, H, W, C) as dit-run writes them, got {candidate.dtype} "
                       f"and {reference.dtype}; pass float latents to latent_pairs")
    return {"psnr": psnr(candidate, reference, IMAGE_RANGE),
            "ssim": ssim(candidate, reference, IMAGE_RANGE, channel_axis=-1)}


def latent_pairs(candidate: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """{"psnr", "ssim"}: (N,) each, of float latents (N, C, L, L) against their references, each pair with its
    reference's range (latent_range)."""
    check_pairs(candidate, reference, "latents")
    ranges = latent_range(reference)
    if np.any(ranges <= 0):
        raise DiTError("a reference sample's latents are constant (range 0): its PSNR and SSIM are undefined")
    return {"psnr": psnr(candidate, reference, ranges), "ssim": ssim(candidate, reference, ranges, channel_axis=0)}


def summary(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """{"mean", "interval" (95% bootstrap, percentile), "p10"} of per-pair values (N,)."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "interval": mean_interval(values, resamples, seed, LEVEL),
            f"p{LOW_PERCENTILE}": float(np.percentile(values, LOW_PERCENTILE))}


def summarise(pairs: dict[str, np.ndarray], resamples: int = 2000, seed: int = 0) -> dict:
    """Each metric of image_pairs / latent_pairs summarised, the number of pairs and those at the PSNR ceiling."""
    return {"n": len(pairs["psnr"]), "at_ceiling": int(np.sum(pairs["psnr"] >= PSNR_CEILING_DB)),
            **{metric: summary(values, resamples, seed) for metric, values in pairs.items()}}
