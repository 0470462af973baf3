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

Two places to warp. By default the model warps the still latent itself (:func:`warp_condition`), at
latent resolution — where a W/S zoom of less than a latent pixel is lost. With ``i2v_warp_pixels`` the
plane moves the image's pixels instead (:func:`warp_image`, the image's edges extended rather than
zero), and each latent frame's I2V latent is the VAE's encoding of the image followed by that frame's
views (:func:`warped_stills`); the callers that hold the VAE compute them (:func:`i2v_stills`) and the
model reads them as given. Each latent frame's views are encoded on their own, so a block's equal the
whole clip's slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.model.camera.plucker import pose_from_plucker

if TYPE_CHECKING:
    from worldloop.model.config import ModelConfig
    from worldloop.model.vae.autoencoder import CausalVideoVAE


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
    # Everything at latent resolution: each latent pixel's mean ray (and mean moment, still o × d).
    rays = F.adaptive_avg_pool2d(_frame_rays(camera, temporal_stride), latent_size)
    return rays_grid(rays, depth=depth)


def rays_grid(rays: Tensor, *, depth: float) -> Tensor:
    """:func:`plane_grid` of one view per ray grid: (N, 6, h, w) rays (one per pixel, or a pixel block's
    mean) → (N, h, w, 2) where each looks on the reference image through the plane ``depth`` away."""
    h, w = rays.shape[-2:]
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


def warp_image(image: Tensor, camera: Tensor, *, temporal_stride: int, depth: float) -> Tensor:
    """``image`` (B, 3, H, W) as every video frame of ``camera`` (B, T, 6·stride, H, W) sees it through
    the plane, at full resolution, the image's edges extended where the view leaves it:
    (B·T, 3, stride, H, W), latent frame by latent frame."""
    b, t = camera.shape[:2]
    rays = camera.unflatten(2, (temporal_stride, 6)).flatten(0, 2).float()  # (B·T·stride, 6, H, W)
    grid = rays_grid(rays, depth=depth)
    source = image.float().repeat_interleave(t * temporal_stride, dim=0)
    views = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return views.unflatten(0, (b * t, temporal_stride)).transpose(1, 2)


@torch.no_grad()
def warped_stills(vae: CausalVideoVAE, image: Tensor, camera: Tensor, *, depth: float) -> Tensor:
    """The I2V latent of every latent frame of ``camera`` with ``ModelConfig.i2v_warp_pixels``: the VAE's
    latent frame 1 of the image followed by that frame's ``stride`` views through the plane
    (:func:`warp_image`) — the still latent (:meth:`CausalVideoVAE.still_latent`) of a camera that
    moves. ``image`` (B, 3, H, W) in [-1, 1] → (B, C, T, h, w), scaled like :meth:`~CausalVideoVAE.encode`."""
    b, t = camera.shape[:2]
    stride = vae.cfg.temporal_stride
    weight = next(vae.parameters())
    views = warp_image(image, camera, temporal_stride=stride, depth=depth)  # (B·T, 3, stride, H, W)
    first = image.float().repeat_interleave(t, dim=0)[:, :, None]
    clips = torch.cat([first, views], dim=2).to(device=weight.device, dtype=weight.dtype)
    latents = vae.encode(clips)[:, :, 1]  # (B·T, C, h, w)
    return latents.unflatten(0, (b, t)).transpose(1, 2)


def i2v_stills(
    cfg: ModelConfig, vae: CausalVideoVAE, *, reference: Tensor, image: Tensor | None, camera: Tensor
) -> Tensor | None:
    """What ``cfg``'s I2V channels carry after frame 0 for a clip with ``camera`` from ``image`` (B, 3,
    H, W) whose latent is ``reference``: nothing (Wan's zeros), the still latent (B, C, 1, h, w; the model
    warps it with ``i2v_warp``) or, with ``i2v_warp_pixels``, each frame's encoded view (B, C, T, h, w)."""
    if not cfg.i2v_still:
        return None
    if not cfg.i2v_warp_pixels:
        return vae.still_latent(reference)
    if image is None or cfg.i2v_warp is None:
        raise ValueError("i2v_warp_pixels needs the reference image and the plane's depth")
    return warped_stills(vae, image, camera, depth=cfg.i2v_warp)


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
