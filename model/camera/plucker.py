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
