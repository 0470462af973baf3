"""No-reference technical image quality: sharpness, exposure and noise of each frame, offline.

An offline proxy for the "imaging quality" dimension of video benchmarks. It is **not** VBench's
imaging-quality score (MUSIQ, a learned model) nor an aesthetic score, and not comparable to either: it
only checks three failure modes a generator shows — blur, clipped exposure and grain — with fixed
formulas on luma in [0, 1]:

* noise σ̂ — Immerkær (1996) "Fast noise variance estimation": the mean |I ∗ N| with the 3×3 mask
  N = [[1, −2, 1], [−2, 4, −2], [1, −2, 1]] (which cancels locally planar signal), times √(π/2)/6,
  taken over the smoothest 30 % of pixels (lowest Sobel magnitude) so texture and edges are not
  counted as noise (the edge exclusion of Tai & Yang 2008);
* sharpness — variance of the 4-neighbour Laplacian minus the part i.i.d. noise of σ̂ contributes
  (20 σ̂², the squared-tap sum of the Laplacian), so grain does not pass for detail;
* clipped fraction — share of pixels with luma ≤ 2/255 or ≥ 253/255 (crushed blacks, blown highlights).

Score per frame (each factor in [0, 1], so the product is too; higher is better):

    (1 − exp(−sharpness / SHARPNESS_SCALE)) · (1 − clipped) · 1 / (1 + (σ̂ / NOISE_SCALE)²)

The scales are set so a clean SynthWorld frame at 64–128 px scores about 0.6–1; they make numbers comparable
across runs of this function only. Small frames and very flat scenes (fog, night) score low by design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.components.evaluation.metrics.video_input import check_video, to_luma

SHARPNESS_SCALE = 5e-3  # Laplacian variance (luma in [0, 1]) at which the sharpness factor is 1 − 1/e
NOISE_SCALE = 0.03  # σ̂ (about 8 grey levels) at which the noise factor is 1/2
FLAT_QUANTILE = 0.3  # noise is measured on the pixels below this quantile of Sobel magnitude
CLIP_LOW, CLIP_HIGH = 2.0 / 255.0, 253.0 / 255.0
LAPLACIAN_NOISE_GAIN = 20.0  # Σ taps² of [[0, 1, 0], [1, −4, 1], [0, 1, 0]]

_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]).view(1, 1, 3, 3)
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


@dataclass(frozen=True)
class ImageQuality:
    """Means over frames. ``score`` in [0, 1] (higher better); ``sharpness`` ≥ 0 (higher sharper);
    ``clipped_fraction`` in [0, 1] (lower better); ``noise_sigma`` ≥ 0 in luma units (lower better)."""

    score: float
    sharpness: float
    clipped_fraction: float
    noise_sigma: float


def _frame_measures(luma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sharpness, clipped fraction and noise σ̂, each (T,), of luma (T, 1, H, W) in [0, 1]."""
    luma = luma.double()
    response = F.conv2d(luma, _IMMERKAER.double()).abs().flatten(1)  # (T, (H-2)(W-2))
    sobel = _SOBEL_X.double()
    edges = (F.conv2d(luma, sobel).abs() + F.conv2d(luma, sobel.transpose(2, 3)).abs()).flatten(1)
    flat = (edges <= edges.quantile(FLAT_QUANTILE, dim=1, keepdim=True)).double()
    noise = (response * flat).sum(dim=1) / flat.sum(dim=1) * math.sqrt(math.pi / 2) / 6.0
    lap_var = F.conv2d(luma, _LAPLACIAN.double()).flatten(1).var(dim=1)
    sharp = (lap_var - LAPLACIAN_NOISE_GAIN * noise**2).clamp(min=0.0)
    clipped = ((luma <= CLIP_LOW) | (luma >= CLIP_HIGH)).double().flatten(1).mean(dim=1)
    return sharp, clipped, noise


def image_quality(video: np.ndarray) -> ImageQuality:
    """Technical image-quality proxy of ``video`` (T, H, W, 3) uint8, H and W ≥ 4 (see module doc).

    Per-frame score (1 − exp(−sharpness / 5e-3)) · (1 − clipped) / (1 + (σ̂ / 0.03)²), averaged over
    frames, with the three measures averaged alongside. Resolution-dependent (measured per pixel):
    compare clips of the same size.
    """
    check_video(video, min_side=4)
    sharp, clipped, noise = _frame_measures(to_luma(video))
    score = (1.0 - torch.exp(-sharp / SHARPNESS_SCALE)) * (1.0 - clipped) / (1.0 + (noise / NOISE_SCALE) ** 2)
    return ImageQuality(
        score=float(score.mean()),
        sharpness=float(sharp.mean()),
        clipped_fraction=float(clipped.mean()),
        noise_sigma=float(noise.mean()),
    )
