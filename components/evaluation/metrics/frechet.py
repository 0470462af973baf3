"""Fréchet distance between two sets of clip features, and FVD over a pluggable feature network.

FVD (Unterthiner et al. 2019) fits a Gaussian to the features of each set of clips and reports the
Fréchet (2-Wasserstein) distance between the two Gaussians,

    FD = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}).

The number depends entirely on the feature network: only distances computed with the same extractor
(:attr:`VideoFeatureExtractor.name`), the same clip length and similar set sizes are comparable. The
published FVD uses the Kinetics-400 I3D (:class:`~worldloop.components.evaluation.metrics.i3d.I3DFeatures`);
the offline default (:class:`~worldloop.components.evaluation.metrics.stats_features.StatsFeatures`) is
for regression tracking only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VideoFeatureExtractor(Protocol):
    """Maps clips to one feature vector each. Implementations load weights only from local files."""

    @property
    def name(self) -> str:
        """Identifies the network and its output in reports, e.g. ``"i3d-k400-logits"``."""
        ...

    @property
    def feature_dim(self) -> int:
        """D, the length of each clip's feature vector."""
        ...

    def extract(self, videos: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float64 features of N clips, each (T, H, W, 3) uint8 RGB."""
        ...


def _check_features(feats: np.ndarray, name: str) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"{name} holds {feats.shape[0]} clip(s); a covariance needs at least 2 (use dozens)")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name} contains NaN or inf features")
    return feats


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; eigenvalues below 0 (rounding) count as 0."""
    eigvals, eigvecs = np.linalg.eigh(m)
    root: np.ndarray = (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T
    return root


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``feats_a`` (N_a, D) and ``feats_b`` (N_b, D).

    Mean and unbiased covariance of each set; N ≥ 2 each (far more than D for a stable estimate — with
    fewer, the covariances are rank-deficient and the distance is biased upwards, but still defined).
    Range [0, inf), lower is better (closer distributions); 0 for identical sets.

    The trace of (Σ_a Σ_b)^{1/2} is computed without a general matrix square root (scipy's ``sqrtm``
    can return complex parts on near-singular products): with S = Σ_a^{1/2} from a symmetric
    eigendecomposition, S Σ_b S is symmetric PSD and similar to Σ_a Σ_b, so
    Tr((Σ_a Σ_b)^{1/2}) = Σ_i sqrt(λ_i(S Σ_b S)), all in float64 with negative rounding clipped to 0.
    The result is clamped at 0 for the same reason.
    """
    a, b = _check_features(feats_a, "feats_a"), _check_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}; use one extractor")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    dist = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)
    return max(dist, 0.0)


def fvd(
    videos_a: Sequence[np.ndarray], videos_b: Sequence[np.ndarray], *, extractor: VideoFeatureExtractor
) -> float:
    """Fréchet video distance between two sets of clips under ``extractor``'s features.

    Lower is better. With :class:`I3DFeatures` (the Kinetics-400 I3D, logits) on 16-frame clips and
    thousands of clips per set this is the published FVD protocol; with any other extractor, or a handful
    of clips, it is a distance of the same form that is only comparable with itself.
    """
    if len(videos_a) < 2 or len(videos_b) < 2:
        raise ValueError(f"need at least 2 clips per set, got {len(videos_a)} and {len(videos_b)}")
    return frechet_distance(extractor.extract(videos_a), extractor.extract(videos_b))
