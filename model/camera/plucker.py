"""Actions → (K, camera-to-world) → per-pixel Plücker rays (DESIGN.md §5.2, GameCraft-1 conventions).

For pixel (u, v) the ray direction is ``d = normalize(R · K⁻¹ · [u + 0.5, v + 0.5, 1])`` (pixel centres
at +0.5) and the origin ``o`` is the camera centre; the embedding is the 6 channels ``[o × d, d]``.
Poses are relative to the first frame of the stream (its camera is the world origin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.model.camera.actions import ActionFrame, CameraMotion, CameraState, continue_poses
from worldloop.model.camera.intrinsics import intrinsics_from_fov


@dataclass(frozen=True)
class CameraTrack:
    """Per-frame intrinsics (F, 3, 3) and camera-to-world poses (F, 4, 4), float32, plus the end state."""

    intrinsics: Tensor
    c2w: Tensor
    end: CameraState


def actions_to_camera(
    actions: Sequence[ActionFrame],
    *,
    width: int,
    height: int,
    fov_deg: float = 75.0,
    motion: CameraMotion | None = None,
    start: CameraState | None = None,
) -> CameraTrack:
    """Integrate an action track into K and poses.

    Without ``start`` the first frame is the origin (a new stream; ``actions[0]`` is ignored, as in
    SynthWorld). With ``start`` every action moves the camera on from that state (a continuing stream).
    """
    if not actions:
        raise ValueError("actions must hold at least one frame")
    poses, end = continue_poses(actions, start or CameraState(), motion=motion, first_is_origin=start is None)
    k = intrinsics_from_fov(width, height, fov_deg)
    intrinsics = torch.from_numpy(np.tile(k, (len(actions), 1, 1))).float()
    return CameraTrack(intrinsics=intrinsics, c2w=torch.from_numpy(poses).float(), end=end)


def plucker_embedding(intrinsics: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
    """Plücker rays ``[o × d, d]`` per pixel.

    Args:
        intrinsics: (F, 3, 3) pinhole K in pixels.
        c2w: (F, 4, 4) camera-to-world (OpenCV: x right, y down, z forward).
    Returns:
        (F, 6, height, width) float32.
    """
    if intrinsics.shape[-2:] != (3, 3) or c2w.shape[-2:] != (4, 4) or intrinsics.shape[0] != c2w.shape[0]:
        raise ValueError(
            f"need K (F, 3, 3) and c2w (F, 4, 4), got {tuple(intrinsics.shape)}, {tuple(c2w.shape)}"
        )
    k = intrinsics.double()
    pose = c2w.double()
    device = k.device  # computed where K lives: on a GPU a 480p block's rays never cross PCIe
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device) + 0.5,
        torch.arange(width, dtype=torch.float64, device=device) + 0.5,
        indexing="ij",
    )
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)  # (HW, 3)
    cam_dirs = pixels @ torch.linalg.inv(k).transpose(1, 2)  # (F, HW, 3)
    dirs = cam_dirs @ pose[:, :3, :3].transpose(1, 2)  # R · K⁻¹ · p
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origin = pose[:, None, :3, 3].expand_as(dirs)
    rays = torch.cat([torch.linalg.cross(origin, dirs, dim=-1), dirs], dim=-1)  # (F, HW, 6)
    return rays.transpose(1, 2).reshape(-1, 6, height, width).float()


def pose_from_plucker(rays: Tensor) -> tuple[Tensor, Tensor]:
    """The camera-to-world rotation and centre that ``[o × d, d]`` rays of a pinhole grid describe.

    The inverse of :func:`plucker_embedding`, also on rays averaged over pixel blocks (``d`` need not be
    unit: a block's mean moment is still ``o × mean d``), for a principal point at the image centre: the
    mean ray is the optical axis (the grid is symmetric about it), the right half's mean minus the left
    half's is the camera's x axis, and ``o`` solves ``Σ (|d|² I − d dᵀ) o = Σ d × m`` (least squares over
    the moments ``m = o × d``). Computed in float32 whatever ``rays`` holds.

    Args:
        rays: (N, 6, H, W).
    Returns:
        R (N, 3, 3) with columns x right, y down, z forward; o (N, 3).
    """
    if rays.dim() != 4 or rays.shape[1] != 6:
        raise ValueError(f"need rays (N, 6, H, W), got {tuple(rays.shape)}")
    r = rays.float()
    m, d = r[:, :3].flatten(2), r[:, 3:].flatten(2)  # (N, 3, HW)
    width = rays.shape[-1]
    z = F.normalize(d.mean(dim=2), dim=1)
    right = r[:, 3:, :, width - width // 2 :].mean(dim=(2, 3)) - r[:, 3:, :, : width // 2].mean(dim=(2, 3))
    x = F.normalize(right - (right * z).sum(1, keepdim=True) * z, dim=1)
    y = torch.linalg.cross(z, x, dim=1)
    rotation = torch.stack([x, y, z], dim=2)
    eye = torch.eye(3, device=rays.device, dtype=torch.float32)
    a = (d * d).sum(dim=(1, 2))[:, None, None] * eye - d @ d.transpose(1, 2)  # Σ (|d|² I − d dᵀ)
    b = torch.linalg.cross(d, m, dim=1).sum(dim=2)  # Σ d × m
    origin = torch.linalg.solve(a, b[..., None])[..., 0]
    return rotation, origin
