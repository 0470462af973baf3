"""World-model inputs of a batch of windows (stages 1–4): latents from the frozen VAE, grouped Plücker
rays, the I2V condition and the encoded captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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
    conditioning: Conditioning  # the instruction (when fed) active over the whole clip
    instruction_blocks: tuple[int | None, ...] = ()  # per row, the block it is issued in (1: from the start)

    def conditioning_at(self, block: int) -> Conditioning:
        """The conditioning in force at ``block`` of a causal rollout: each row's instruction only from
        the block it was issued in (a player types it there; serving recaches then)."""
        c = self.conditioning
        if c.instruction_mask is None or not self.instruction_blocks:
            return c
        issued = [b is not None and b <= block for b in self.instruction_blocks]
        active = torch.tensor(issued, device=c.instruction_mask.device)[:, None]
        return replace(c, instruction_mask=c.instruction_mask & active)

    def instruction_turns(self, *, last_block: int) -> dict[int, Conditioning]:
        """The rollout's instruction changes up to ``last_block``: block → conditioning from then on."""
        blocks = sorted({b for b in self.instruction_blocks if b is not None and 1 < b <= last_block})
        return {b: self.conditioning_at(b) for b in blocks}


@torch.no_grad()
def prepare_batch(
    windows: Sequence[Window],
    *,
    vae: CausalVideoVAE,
    text_encoder: TextEncoder,
    with_instruction: bool,
    device: torch.device | str = "cpu",
    block_frames: int | None = None,
) -> PreparedBatch:
    """Encode ``windows`` into model inputs. ``with_instruction`` feeds the instructions (stage 2 on);
    with ``block_frames`` (a causal student's block) also the block each is issued in (from the
    window's ``instruction_frame``)."""
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
        if block_frames is not None:
            issued = tuple(
                issue_block(w.instruction_frame or 0, temporal_stride=stride, block_frames=block_frames)
                if w.instruction
                else None
                for w in windows
            )
            return PreparedBatch(latents, cond, camera, conditioning, issued)
    return PreparedBatch(latents, cond, camera, conditioning)


def issue_block(frame: int, *, temporal_stride: int, block_frames: int) -> int:
    """The causal block holding video frame ``frame`` (frame 0, the reference, and the first latent
    block's frames: block 1). Video frame v > 0 is in latent frame ceil(v / stride)."""
    latent = -(-frame // temporal_stride)
    return 1 if latent == 0 else (latent - 1) // block_frames + 1
