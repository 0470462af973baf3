"""Input checks and conversions shared by every metric: a video is (T, H, W, 3) uint8 RGB, as
:func:`worldloop.video.decode_video` returns it; metrics compute in torch float."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from worldloop.video import check_frames

# ITU-R BT.601 luma weights (what OpenCV's RGB2GRAY uses).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def check_video(video: np.ndarray, *, name: str = "video", min_frames: int = 1, min_side: int = 1) -> None:
    """Raise ValueError unless ``video`` is a (T, H, W, 3) uint8 array with T ≥ ``min_frames`` and
    H, W ≥ ``min_side`` (the project's one frame check, :func:`worldloop.video.check_frames`)."""
    check_frames(video, name=name, min_frames=min_frames, min_side=min_side)


def check_pair(video: np.ndarray, reference: np.ndarray, *, min_side: int = 1) -> None:
    """Both are valid videos of the same shape (a generated clip against its ground truth)."""
    check_video(video, name="video", min_side=min_side)
    check_video(reference, name="reference", min_side=min_side)
    if video.shape != reference.shape:
        raise ValueError(
            f"video {video.shape} and reference {reference.shape} differ in shape; resample or crop the "
            "generated clip to the reference's frame count and size first"
        )


def to_float(video: np.ndarray) -> Tensor:
    """(T, H, W, 3) uint8 → (T, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float() / 255.0


def to_luma(video: np.ndarray) -> Tensor:
    """(T, H, W, 3) uint8 → (T, 1, H, W) float32 luma in [0, 1]."""
    rgb = to_float(video)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)
