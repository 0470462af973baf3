"""Full-reference fidelity against SynthWorld ground truth: PSNR and SSIM (DESIGN.md §7).

Both compare a generated clip with the frames SynthWorld rendered for the same commanded camera, frame
by frame and pixel by pixel, so they only make sense where a ground truth exists (SynthWorld cases, or
reconstruction of a held-out real clip). They reward blur over plausible detail that is placed
differently: read them next to the no-reference metrics, not instead of them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.components.evaluation.metrics.video_input import check_pair, to_float

SSIM_WINDOW = 11  # Gaussian window size and width of Wang et al. (2004), §III-C
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03  # stabilisers, times the data range (1.0 here)


def _frame_mse(video: np.ndarray, reference: np.ndarray) -> Tensor:
    """(T,) float64 mean squared error per frame, intensities in [0, 1]."""
    diff = to_float(video).double() - to_float(reference).double()
    return diff.pow(2).flatten(1).mean(dim=1)


def psnr_per_frame(video: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) of each frame: 10·log10(1 / MSE) over RGB in [0, 1].

    Args:
        video, reference: (T, H, W, 3) uint8 RGB of the same shape.
    Returns:
        (T,) float64; ``inf`` for a frame identical to its reference. Higher is better.
    """
    check_pair(video, reference)
    mse = _frame_mse(video, reference).numpy()
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, -10.0 * np.log10(mse), np.inf)


def psnr(video: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of a whole clip: 10·log10(1 / MSE) with the MSE pooled over every frame and pixel.

    Range [0, inf); ``inf`` only when the clips are identical; higher is better. Pooling the MSE (rather
    than averaging per-frame dB) keeps one identical frame — the conditioning image of an image-to-video
    model — from making the mean infinite. Not a perceptual measure: a blurred clip can outscore a sharp
    one whose details are shifted by a pixel. Use :func:`psnr_per_frame` for the per-frame curve.
    """
    check_pair(video, reference)
    mse = float(_frame_mse(video, reference).mean())
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def _gaussian_window(channels: int) -> Tensor:
    """(C, 1, W, W) float32 normalised Gaussian (built in float64), one depthwise filter per channel."""
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).float().contiguous()


def ssim_per_frame(video: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Structural similarity of each frame (Wang et al. 2004), averaged over its RGB channels.

    Local means, variances and covariance come from an 11×11 Gaussian window (σ = 1.5) applied without
    padding (the map covers the "valid" region); C1 = (0.01)², C2 = (0.03)² for data range 1. Computed in
    float32 (as common implementations; the C1, C2 stabilisers dwarf its rounding).

    Args:
        video, reference: (T, H, W, 3) uint8 RGB of the same shape, H and W ≥ 11.
    Returns:
        (T,) float64 in [-1, 1]; 1 for a frame identical to its reference. Higher is better.
    """
    check_pair(video, reference, min_side=SSIM_WINDOW)
    x, y = to_float(video), to_float(reference)  # (T, 3, H, W) float32
    window = _gaussian_window(3)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=3)  # (T, 3, H - 10, W - 10)

    mu_x, mu_y = blur(x), blur(y)
    # (Co)variances are shift-invariant: take them of the frame-centred signals, so float32's
    # E[x²] − E[x]² cancellation works on small numbers (a flat frame gets exactly 0).
    xc, yc = x - x.mean(dim=(2, 3), keepdim=True), y - y.mean(dim=(2, 3), keepdim=True)
    mu_xc, mu_yc = blur(xc), blur(yc)
    var_x = blur(xc * xc) - mu_xc**2
    var_y = blur(yc * yc) - mu_yc**2
    cov = blur(xc * yc) - mu_xc * mu_yc
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).double().mean(dim=1).numpy()


def ssim(video: np.ndarray, reference: np.ndarray) -> float:
    """Mean over frames of :func:`ssim_per_frame`: in [-1, 1], 1 for identical clips, higher is better.

    Single-scale, RGB-averaged SSIM: close to, but not bit-identical with, other libraries' defaults
    (which differ in padding, colour handling and downsampling), so compare numbers from this function
    only with each other.
    """
    return float(ssim_per_frame(video, reference).mean())
