"""World-model inputs of a batch of windows (stages 1–4): latents from the frozen VAE, grouped Plücker
rays, the I2V condition and the encoded captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.world_model import Conditioning, i2v_condition
from worldloop.model.camera.plucker import plucker_embedding
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.windows import Window
from worldloop.model.vae.autoencoder import CausalVideoVAE


@dataclass(frozen=True)
class PreparedBatch:
    """Model inputs of a batch, computed without gradients (frozen VAE and text encoder)."""

    latents: Tensor  # (B, C, T, h, w)
    cond: Tensor  # (B, stride + C, T, h, w)
    camera: Tensor  # (B, T, 6·stride, H, W)
    conditioning: Conditioning


@torch.no_grad()
def prepare_batch(
    windows: Sequence[Window],
    *,
    vae: CausalVideoVAE,
    text_encoder: TextEncoder,
    with_instruction: bool,
    device: torch.device | str = "cpu",
) -> PreparedBatch:
    """Encode ``windows`` into model inputs. ``with_instruction`` feeds interaction captions (stage 2)."""
    video = torch.stack([w.video for w in windows]).to(device)
    latents = vae.encode(video)
    stride = vae.cfg.temporal_stride
    height, width = video.shape[-2:]
    rays = torch.stack([plucker_embedding(w.intrinsics, w.c2w, height, width) for w in windows])
    camera = group_plucker(rays.to(device), temporal_stride=stride)
    cond = i2v_condition(latents[:, :, :1], num_frames=latents.shape[2], temporal_stride=stride)
    text = text_encoder.encode([w.caption for w in windows])
    conditioning = Conditioning(text.tokens.to(device), text.mask.to(device))
    if with_instruction:
        inst = text_encoder.encode([w.instruction or "" for w in windows])
        has = torch.tensor([bool(w.instruction) for w in windows], device=device)
        conditioning = Conditioning(
            text.tokens.to(device),
            text.mask.to(device),
            inst.tokens.to(device),
            inst.mask.to(device) & has[:, None],
        )
    return PreparedBatch(latents, cond, camera, conditioning)
