"""Offline clip features for Fréchet distance: hand-crafted statistics, no weights, no downloads.

FD over these statistics is for regression tracking only (did this checkpoint drift from the last one,
or from SynthWorld?) — it is **not** FVD and not comparable to any published FVD number. It sees
colour, contrast, sharpness and motion energy, not semantics: two clips of different scenes with the
same statistics are "close".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.components.evaluation.metrics.video_input import check_video, to_float, to_luma

SCALES = (1, 2, 4)  # spatial downsampling factors of the working-size luma
LONG_STRIDE = 4  # frame stride of the slow-change statistic
LUMA_QUANTILES = (0.05, 0.5, 0.95)
ENERGY_FLOOR = 1e-3  # added before the log of gradient/difference statistics (a frozen clip has 0)
_PER_SCALE = 5  # gradient mean/std, frame-difference mean/std, long-stride difference mean


class StatsFeatures:
    """Per-clip statistics of colour, spatial gradients and frame differences at a few scales.

    Each clip (T ≥ 2 frames) is resized to ``work_size`` × ``work_size`` (area averaging) so clips of
    different resolutions are comparable, then described by (D = 9 + 5 × 3 = 24):

    * colour: per-channel RGB mean and std; luma 5th, 50th and 95th percentiles;
    * at luma downsampled ×1, ×2, ×4: mean and std of the Sobel gradient magnitude (sharpness,
      texture), mean and std of |L_{t+1} − L_t| (motion and flicker energy), and the mean of
      |L_{t+s} − L_t| with s = min(4, T − 1) (slow drift).

    Colour values are intensities in [0, 1]; the gradient and difference statistics, which span decades
    (a frozen clip has none, a noisy one plenty), enter as log10(x + 1e-3), so a doubling weighs the same
    at any level and blur, grain or flicker move the distance as much as a colour cast does.
    Name: ``"stats-v1"``; change it if the features change.
    """

    def __init__(self, *, work_size: int = 64) -> None:
        if work_size < 16:
            raise ValueError(f"work_size must be at least 16 px, got {work_size}")
        self.work_size = work_size

    @property
    def name(self) -> str:
        return "stats-v1"

    @property
    def feature_dim(self) -> int:
        return 9 + _PER_SCALE * len(SCALES)

    def _resize(self, t: Tensor) -> Tensor:
        return F.interpolate(t, size=(self.work_size, self.work_size), mode="area")

    def _one(self, video: np.ndarray) -> Tensor:
        check_video(video, min_frames=2)
        rgb = self._resize(to_float(video))  # (T, 3, S, S)
        luma = self._resize(to_luma(video))  # (T, 1, S, S)
        q = torch.tensor(LUMA_QUANTILES, dtype=luma.dtype)
        parts = [rgb.mean(dim=(0, 2, 3)), rgb.std(dim=(0, 2, 3)), torch.quantile(luma.flatten(), q)]
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3) / 8
        stride = min(LONG_STRIDE, video.shape[0] - 1)
        for scale in SCALES:
            lum = F.avg_pool2d(luma, scale) if scale > 1 else luma
            gx = F.conv2d(lum, sobel_x)
            gy = F.conv2d(lum, sobel_x.transpose(2, 3))
            grad = torch.sqrt(gx**2 + gy**2)  # (T, 1, S', S')
            diff = (lum[1:] - lum[:-1]).abs()
            slow = (lum[stride:] - lum[:-stride]).abs()
            energy = torch.stack([grad.mean(), grad.std(), diff.mean(), diff.std(), slow.mean()])
            parts.append(torch.log10(energy + ENERGY_FLOOR))
        return torch.cat(parts)

    def extract(self, videos: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 24) float64 features of N clips, each (T ≥ 2, H, W, 3) uint8 RGB."""
        if len(videos) == 0:
            raise ValueError("videos is empty")
        return torch.stack([self._one(v) for v in videos]).double().numpy()
