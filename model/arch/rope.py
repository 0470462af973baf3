"""3D rotary position embedding over (frame, row, column) of latent tokens (Wan2.x layout).

The head dim ``d`` is split into a time part ``d - 4·(d//6)`` and two spatial parts ``2·(d//6)``;
each part rotates consecutive channel pairs by ``position · θ^(-2i/d_part)``. Positions are absolute
latent-frame indices, so a key rotated once can be cached and reused by any later query — cached and
full-sequence attention then see identical numbers (DESIGN.md §5.4). Angles are formed in float64 so
frame indices in the tens of thousands (long streams) keep their precision.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels given to (time, height, width) rotations."""
    part = head_dim // 6
    return head_dim - 4 * part, 2 * part, 2 * part


def token_positions(frame_start: int, num_frames: int, height: int, width: int) -> Tensor:
    """Integer (frame, row, col) of each token, frame-major: (num_frames·height·width, 3)."""
    f = torch.arange(frame_start, frame_start + num_frames)
    r = torch.arange(height)
    c = torch.arange(width)
    grid = torch.stack(torch.meshgrid(f, r, c, indexing="ij"), dim=-1)  # (F, H, W, 3)
    return grid.reshape(-1, 3)


def rope_cos_sin(positions: Tensor, *, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables for ``positions`` (L, 3): each (L, head_dim // 2), float32."""
    angles = []
    for axis, size in enumerate(rope_split(head_dim)):
        inv = theta ** (-torch.arange(0, size, 2, dtype=torch.float64) / size)  # (size/2,)
        angles.append(positions[:, axis : axis + 1].to(torch.float64) * inv)
    angle = torch.cat(angles, dim=-1)  # (L, head_dim/2)
    return torch.cos(angle).float(), torch.sin(angle).float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive channel pairs of ``x`` (B, L, H, D) by tables (L, D/2); same dtype out."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, L, H, D/2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    c = cos[None, :, None, :].to(x.device)
    s = sin[None, :, None, :].to(x.device)
    out = torch.stack((real * c - imag * s, real * s + imag * c), dim=-1)
    return out.flatten(-2).to(x.dtype)
