"""Paired fidelity (runtime.tuning.fidelity) on pairs with known answers.

Known answers: PSNR = 10 log10(R^2 / MSE) exactly for a known difference; latents plus Gaussian noise of
sigma s have MSE close to s^2 (relative spread sqrt(2 / elements) per pair); SSIM is 1 for identical
pictures and near 0 for independent noise; the mean of N draws of N(m, sd^2) has a 95% interval about
2 * 1.96 * sd / sqrt(N) wide, and their 10th percentile is near m - 1.2816 sd.
"""

import numpy as np
import pytest

from dit_ref import DiTError
from runtime.tuning.fidelity import (PSNR_CEILING_DB, image_pairs, latent_pairs, latent_range, psnr, summarise,
                                     summary)

Z = 1.959964  # the standard normal's 97.5% quantile


def images(n: int, seed: int = 0) -> np.ndarray:
    """n uint8 pictures (n, 28, 28, 1) with grey levels 40..215 (room to add to without clipping)."""
    return np.random.default_rng(seed).integers(40, 216, (n, 28, 28, 1), dtype=np.uint8)


def test_identical_pictures_sit_at_the_ceiling_with_ssim_one():
    reference = images(5)
    pairs = image_pairs(reference.copy(), reference)
    latents = np.random.default_rng(1).standard_normal((3, 4, 32, 32)).astype(np.float32)
    latent = latent_pairs(latents.copy(), latents)
    print(f"identical: image PSNR {pairs['psnr']}, SSIM {pairs['ssim']}; latent SSIM {latent['ssim']}")
    assert np.all(pairs["psnr"] == PSNR_CEILING_DB) and np.all(latent["psnr"] == PSNR_CEILING_DB)
    np.testing.assert_allclose(pairs["ssim"], 1.0, atol=1e-12)
    np.testing.assert_allclose(latent["ssim"], 1.0, atol=1e-12)
    summarised = summarise(pairs, resamples=200)
    assert summarised["n"] == 5 and summarised["at_ceiling"] == 5 and summarised["psnr"]["mean"] == PSNR_CEILING_DB


def test_a_known_difference_has_its_exact_psnr():
    # 49 of 784 pixels (1/16) two grey levels up: MSE = 4 / 16 = 0.25, PSNR = 10 log10(255^2 / 0.25) = 54.151 dB.
    reference = images(4)
    candidate = reference.copy()
    candidate.reshape(4, -1)[:, ::16] += 2
    measured = image_pairs(candidate, reference)["psnr"]
    expected = 10 * np.log10(255.0 ** 2 / 0.25)
    print(f"two levels on 1/16 of the pixels: PSNR {measured} against {expected:.4f} dB")
    np.testing.assert_allclose(measured, expected, rtol=1e-12)
    assert psnr(candidate, reference, 255.0)[0] == pytest.approx(expected, rel=1e-12)


def test_latents_with_known_noise_have_the_psnr_of_their_range_over_sigma():
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((64, 4, 32, 32)).astype(np.float32)  # S/2's latent shape
    sigma = 0.05
    candidate = reference + sigma * rng.standard_normal(reference.shape).astype(np.float32)
    measured = latent_pairs(candidate, reference)["psnr"]  # (64,)
    expected = 20 * np.log10(latent_range(reference) / sigma)  # per pair: its own reference's range
    error = np.abs(measured - expected).max()
    print(f"sigma {sigma}: PSNR mean {measured.mean():.3f} dB against {expected.mean():.3f}; "
          f"max |error| {error:.3f} dB")
    assert error < 0.4  # 4,096 elements: the MSE's relative spread is 2.2%, 0.1 dB; 4 sd
    assert abs(measured.mean() - expected.mean()) < 0.05  # and the mean's over 64 pairs is 0.012 dB


def test_ssim_falls_with_noise_and_is_near_zero_for_unrelated_pictures():
    reference = images(6)
    rng = np.random.default_rng(3)
    noised = [np.clip(reference + rng.normal(0, s, reference.shape), 0, 255).astype(np.uint8) for s in (2, 8, 32)]
    values = [image_pairs(candidate, reference)["ssim"].mean() for candidate in noised]
    unrelated = image_pairs(images(40, seed=9), images(40, seed=10))["ssim"]  # (40,)
    print(f"SSIM at noise 2, 8, 32 levels: {np.round(values, 4)}; unrelated pictures: mean {unrelated.mean():.3f}, "
          f"sd {unrelated.std():.3f}")
    assert 1.0 > values[0] > values[1] > values[2]
    assert abs(unrelated.mean()) < 0.05  # one pair's spread is ~0.08 (784 pixels, 11 x 11 windows): the mean's 0.013


def test_the_interval_covers_the_true_mean_with_the_normal_width_and_p10_is_the_tenth_percentile():
    mean, sd, n = 40.0, 4.0, 2000
    values = np.random.default_rng(4).normal(mean, sd, n)
    summarised = summary(values, resamples=1000, seed=0)
    low, high = summarised["interval"]
    width = 2 * Z * values.std(ddof=1) / np.sqrt(n)
    print(f"N(40, 4^2), {n} pairs: mean {summarised['mean']:.3f} [{low:.3f}, {high:.3f}], width {high - low:.3f} "
          f"against {width:.3f}; p10 {summarised['p10']:.3f} against {mean - 1.2816 * sd:.3f}")
    assert low <= mean <= high
    assert high - low == pytest.approx(width, rel=0.1)
    assert summarised["p10"] == pytest.approx(mean - 1.2816 * sd, abs=0.4)  # the percentile's sd here: ~0.16


def test_bad_pairs_are_one_line_errors():
    with pytest.raises(DiTError, match=r"one shape \(N, ...\)"):
        image_pairs(images(3), images(2))
    with pytest.raises(DiTError, match="must be uint8"):
        image_pairs(images(2).astype(np.float32), images(2).astype(np.float32))
    with pytest.raises(DiTError, match="constant"):
        latent_pairs(np.zeros((1, 4, 8, 8)), np.zeros((1, 4, 8, 8)))
