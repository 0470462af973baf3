"""The still latent moved by the commanded camera (``ModelConfig.i2v_warp``).

With ``i2v_still`` every generated latent frame's I2V channels hold the reference image held still. With
``i2v_warp`` they hold it as the frame's camera would see it if the scene were a plane facing the
reference camera at ``i2v_warp`` world units: a homography of the reference, exact for a turn whatever
the scene, and for a move a zoom (W/S) or slide (A/D) of the right sign. Content the reference never
showed is zero. The model then predicts what the plane misses (parallax, new content, events) instead
of learning from scratch how its camera input moves pixels — which a small model trained for minutes
did not learn from Plücker rays alone (the same loss under another clip's camera).

Everything comes from the model's own inputs: the frame's grouped Plücker rays give its pose relative
to the reference (:func:`~worldloop.model.camera.plucker.pose_from_plucker`) and its intrinsics, so
training, the stage-3/4 scores and a streaming rollout (block by block, recache included) warp alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.model.camera.plucker import pose_from_plucker


def _frame_rays(camera: Tensor, temporal_stride: int) -> Tensor:
    """Each latent frame's last video frame's rays: (B, T, 6·stride, H, W) → (B·T, 6, H, W)."""
    return camera[:, :, 6 * (temporal_stride - 1) :].flatten(0, 1).float()


def plane_grid(camera: Tensor, *, temporal_stride: int, latent_size: tuple[int, int], depth: float) -> Tensor:
    """Where each latent pixel of each frame looks on the reference image, through the plane.

    Args:
        camera: (B, T, 6·stride, H, W) grouped rays, poses relative to the reference camera.
        latent_size: (h, w) of the latents (H, W divided by the VAE's spatial stride).
        depth: the plane's distance from the reference camera, in world units.
    Returns:
        (B·T, h, w, 2) ``grid_sample`` coordinates (x, y) in [-1, 1] on the reference, align_corners
        False; points behind either camera get 2 (outside: sampled as zero).
    """
    h, w = latent_size
    # Everything at latent resolution: each latent pixel's mean ray (and mean moment, still o × d).
    rays = F.adaptive_avg_pool2d(_frame_rays(camera, temporal_stride), (h, w))
    rotation, origin = pose_from_plucker(rays)  # (N, 3, 3), (N, 3)
    d = F.normalize(rays[:, 3:], dim=1)
    # Intrinsics in grid units, from the frame's own rays in its own axes: x/z at the outer columns'
    # (rows') centres is where the grid reads ±(1 − 1/w) (±(1 − 1/h)).
    own = torch.einsum("nji,njhw->nihw", rotation, d)
    scale_x = (1 - 1 / w) / (own[:, 0, :, -1] / own[:, 2, :, -1]).mean(dim=1)  # (N,)
    scale_y = (1 - 1 / h) / (own[:, 1, -1, :] / own[:, 2, -1, :]).mean(dim=1)
    # Ray from the frame's centre o along d meets the plane z = depth (reference axes) at o + s·d.
    oz = origin[:, 2, None, None]
    s = (depth - oz) / d[:, 2].clamp_min(1e-6)
    x = origin[:, 0, None, None] + s * d[:, 0]
    y = origin[:, 1, None, None] + s * d[:, 1]
    gx, gy = x / depth * scale_x[:, None, None], y / depth * scale_y[:, None, None]
    behind = (d[:, 2] <= 1e-6) | (oz >= depth)
    grid = torch.stack([gx, gy], dim=-1)
    return torch.where(behind[..., None], torch.full_like(grid, 2.0), grid)


def warp_condition(cond: Tensor, camera: Tensor, *, temporal_stride: int, depth: float) -> Tensor:
    """``cond`` (B, stride + C, T, h, w) with the latent channels of every frame whose mask is zero
    (the generated frames: they carry the still latent) replaced by that latent seen through the
    plane from the frame's camera (:func:`plane_grid`). Frames with the reference (mask one) are kept."""
    b, _, t, h, w = cond.shape
    if camera.shape[:2] != (b, t):
        raise ValueError(f"camera {tuple(camera.shape)} does not match cond {tuple(cond.shape)} (B, T)")
    grid = plane_grid(camera, temporal_stride=temporal_stride, latent_size=(h, w), depth=depth)
    mask, y = cond[:, :temporal_stride], cond[:, temporal_stride:]
    frames = y.transpose(1, 2).flatten(0, 1).float()  # (B·T, C, h, w)
    warped = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = warped.unflatten(0, (b, t)).transpose(1, 2).to(y.dtype)
    generated = (mask[:, :1] == 0).expand_as(y)  # (B, C, T, h, w)
    return torch.cat([mask, torch.where(generated, warped, y)], dim=1)
