"""Stage 1/2 objective: flow matching on camera-conditioned, image-conditioned clips (DESIGN.md §6).

Stages 1 and 2 train the bidirectional base model (full attention over the clip, any length); it is
the teacher of stage 3, which turns it into the block-causal student.

A batch of :class:`~worldloop.model.train.data.Window` goes through the frozen VAE and text encoder,
gets Plücker rays grouped per latent frame, and is noised with one σ per sample (or per block, with
``per_frame``). Latent frame 0 is the reference image: it stays clean (σ = 0), is given to the model
through the I2V channels as well, and is left out of the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.world_model import Conditioning, WorldModel, i2v_condition
from worldloop.model.camera.plucker import plucker_embedding
from worldloop.model.diffusion.flow_matching import add_noise, velocity_target
from worldloop.model.diffusion.schedule import sample_training_sigmas
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.data import Window
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


def flow_matching_loss(
    model: WorldModel,
    batch: PreparedBatch,
    *,
    shift: float,
    per_frame: bool,
    generators: Sequence[torch.Generator],
    causal: bool = False,
    forward: Callable[..., Tensor] | None = None,
) -> Tensor:
    """MSE between predicted and true velocity over the generated latent frames (1..T-1).

    One generator per sample draws that sample's σ and noise, so a sample's loss does not depend on
    which batch, process or rank it lands in (one process and two ranks see the same numbers).
    ``forward`` calls the model (a DeepSpeed engine must be called itself, not its ``module``:
    ZeRO-2 resets its gradient bookkeeping in the engine's forward).
    """
    x0 = batch.latents
    b, _, t = x0.shape[:3]
    if len(generators) != b:
        raise ValueError(f"need one generator per sample ({b}), got {len(generators)}")
    sigmas, noises = [], []
    for g in generators:
        s = sample_training_sigmas(
            1,
            t - 1,
            shift=shift,
            per_frame=per_frame,
            generator=g,
            frames_per_block=model.cfg.causal.block_frames,
        )
        sigmas.append(s)
        noises.append(torch.randn((1, *x0.shape[1:]), generator=g))
    # Frame 0 (the reference) is clean; the blocks after it get the drawn levels.
    sigma = torch.cat([torch.zeros(b, 1), torch.cat(sigmas)], dim=1).to(x0.device)
    noise = torch.cat(noises).to(x0)
    x_t = add_noise(x0, noise, sigma)
    v = (forward or model)(
        x_t,
        timesteps=sigma * 1000.0,
        cond=batch.cond,
        camera=batch.camera,
        conditioning=batch.conditioning,
        causal=causal,
    )
    target = velocity_target(x0, noise)
    return F.mse_loss(v[:, :, 1:].float(), target[:, :, 1:].float())
