"""Dense optical flow between frames of a clip (OpenCV Farneback), at a bounded working size.

Shared by the flow-based metrics (:mod:`.temporal_consistency`, :mod:`.dynamic_degree`). Farneback fits
quadratic polynomials to each neighbourhood, so a uniform brightness offset (flicker) barely moves the
flow, while it shows up in the warped residual — the split those metrics rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from worldloop.components.evaluation.metrics.video_input import check_video

MAX_WORK_SIDE = 128  # frames with a longer side are downscaled (area) to this before the flow
# OpenCV's reference parameters: pyramid scale 0.5, 3 levels, 15 px window, 3 iterations, poly_n 5, σ 1.2.
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


@dataclass(frozen=True)
class ClipFlow:
    """``grey`` (T, h, w) uint8 working-size luma; ``backward`` (P, h, w, 2) float32 flow of each pair
    (i, i + stride) from frame i + stride back to frame i (where each pixel came from), in working px;
    ``pairs`` the P frame indices i; ``diagonal`` of the working frame in px."""

    grey: np.ndarray
    backward: np.ndarray
    pairs: np.ndarray
    stride: int

    @property
    def diagonal(self) -> float:
        return float(np.hypot(*self.grey.shape[1:]))


def clip_flow(video: np.ndarray, *, stride: int = 1) -> ClipFlow:
    """Backward Farneback flow of every pair (i, i + stride) of ``video`` (T, H, W, 3) uint8, T > stride."""
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    check_video(video, min_frames=stride + 1, min_side=16)
    height, width = video.shape[1:3]
    scale = min(1.0, MAX_WORK_SIDE / max(height, width))
    size = (max(16, round(width * scale)), max(16, round(height * scale)))
    grey = np.stack(
        [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA) for f in video]
    )
    pairs = np.arange(len(video) - stride)
    backward = np.stack(
        [
            cv2.calcOpticalFlowFarneback(grey[i + stride], grey[i], None, *FARNEBACK)  # type: ignore[call-overload]
            for i in pairs
        ]
    )
    return ClipFlow(grey=grey, backward=backward.astype(np.float32), pairs=pairs, stride=stride)
