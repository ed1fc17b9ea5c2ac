"""The Fréchet distance between Gaussians fitted to features (Heusel et al. 2017, "GANs Trained by a Two
Time-Scale Update Rule...", the FID formula), one at a time and batched for a bootstrap. Pure numpy."""

import numpy as np

from dit_ref.errors import DiTError


def statistics(feature_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), covariance (F, F)) of features (N, F), both float64; N >= 2."""
    if len(feature_rows) < 2:
        raise DiTError(f"a Fréchet distance needs at least 2 images, got {len(feature_rows)}")
    return feature_rows.mean(0), np.cov(feature_rows, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (rounding negatives clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), the Fréchet distance of two Gaussians.

    tr((S1 S2)^1/2) is taken through the symmetric PSD matrix S1^1/2 S2 S1^1/2 (same eigenvalues as
    S1 S2) so eigh applies: no complex parts to discard and no scipy, unlike FID's usual sqrtm.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:  # (F,) * 2 == (F, F)
        raise DiTError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances "
                       f"{sigma1.shape}, {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)  # eigenvalues of S1 S2
    trace_cross_root = np.sqrt(np.clip(cross, 0.0, None)).sum()
    distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_cross_root
    return float(max(distance, 0.0))


def frechet_distances(means: np.ndarray, covariances: np.ndarray, mu, sigma) -> np.ndarray:
    """(B,) Fréchet distances of B Gaussians, means (B, F) and covariances (B, F, F), to one (mu, sigma).

    The same formula as frechet_distance, batched for a bootstrap: tr((S sigma)^1/2) is taken through
    sigma^1/2 S sigma^1/2 (the same eigenvalues), so sigma's root is taken once and each S costs one eigvalsh.
    """
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if means.ndim != 2 or means.shape[1:] != mu.shape or covariances.shape != (len(means), *sigma.shape):
        raise DiTError(f"mismatched statistics: means {means.shape}, covariances {covariances.shape} against "
                       f"{mu.shape}, {sigma.shape}")
    root = _psd_sqrt(sigma)  # (F, F)
    cross = np.linalg.eigvalsh(root @ covariances @ root)  # (B, F): eigenvalues of each S sigma
    trace_cross_root = np.sqrt(np.clip(cross, 0.0, None)).sum(1)  # (B,)
    distance = (np.sum((means - mu) ** 2, 1) + np.trace(covariances, axis1=1, axis2=2) + np.trace(sigma)
                - 2 * trace_cross_root)
    return np.maximum(distance, 0.0)
