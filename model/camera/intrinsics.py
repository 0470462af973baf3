"""Pinhole intrinsics. Pixel (u, v) covers [u, u+1) × [v, v+1); its centre is (u+0.5, v+0.5)."""

from __future__ import annotations

import math

import numpy as np


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> np.ndarray:
    """Square-pixel K (3, 3) with horizontal field of view ``fov_x_deg`` and the image centre as
    principal point (continuous coordinates, so cx = width / 2)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1.0 <= fov_x_deg <= 170.0:
        raise ValueError(f"fov_x_deg must be in [1, 170] degrees, got {fov_x_deg}")
    focal = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
