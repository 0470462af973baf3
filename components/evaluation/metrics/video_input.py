"""Input checks and conversions shared by every metric: a video is (T, H, W, 3) uint8 RGB, as
:func:`worldloop.video.decode_video` returns it; metrics compute in torch float."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# ITU-R BT.601 luma weights (what OpenCV's RGB2GRAY uses).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def check_video(video: np.ndarray, *, name: str = "video", min_frames: int = 1, min_side: int = 1) -> None:
    """Raise ValueError unless ``video`` is a (T, H, W, 3) uint8 array with T ≥ ``min_frames`` and
    H, W ≥ ``min_side``."""
    if not isinstance(video, np.ndarray):
        raise ValueError(f"{name} must be a numpy array (T, H, W, 3) uint8, got {type(video).__name__}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (T, H, W, 3), got {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB (decode_video's output), got dtype {video.dtype}")
    if video.shape[0] < min_frames:
        raise ValueError(f"{name} has {video.shape[0]} frames; this metric needs at least {min_frames}")
    if min(video.shape[1:3]) < min_side:
        raise ValueError(
            f"{name} is {video.shape[2]}x{video.shape[1]} px; this metric needs at least {min_side} px a side"
        )


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
