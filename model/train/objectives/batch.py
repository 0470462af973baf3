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
class TurnTokens:
    """Every row's turns, encoded: row r's turn k is ``tokens[r, k]`` (``mask`` False past its turns)."""

    tokens: Tensor  # (B, K, L, D)
    mask: Tensor  # (B, K, L) bool
    blocks: tuple[tuple[int, ...], ...]  # per row, the causal block each turn is issued in (ascending)


@dataclass(frozen=True)
class PreparedBatch:
    """Model inputs of a batch, computed without gradients (frozen VAE and text encoder)."""

    latents: Tensor  # (B, C, T, h, w)
    cond: Tensor  # (B, stride + C, T, h, w)
    camera: Tensor  # (B, T, 6·stride, H, W)
    conditioning: Conditioning  # the instructions (when fed) joined, over the whole clip
    turns: TurnTokens | None = None  # with a causal block size: each instruction at its block

    @property
    def instruction_blocks(self) -> tuple[int | None, ...]:
        """Per row, the block its first instruction is issued in (None without any)."""
        return () if self.turns is None else tuple(b[0] if b else None for b in self.turns.blocks)

    def conditioning_at(self, block: int) -> Conditioning:
        """The conditioning in force at ``block`` of a causal rollout: for each row, the instruction it
        issued last at or before that block (a player types it there; serving recaches then), none
        before its first."""
        c, turns = self.conditioning, self.turns
        if turns is None or c.instruction_tokens is None:
            return c
        rows = range(len(turns.blocks))
        latest = [sum(1 for b in turns.blocks[r] if b <= block) - 1 for r in rows]
        pick = torch.tensor([max(k, 0) for k in latest], device=turns.tokens.device)
        index = torch.arange(len(pick), device=pick.device)
        active = torch.tensor([k >= 0 for k in latest], device=turns.mask.device)[:, None]
        return replace(
            c, instruction_tokens=turns.tokens[index, pick], instruction_mask=turns.mask[index, pick] & active
        )

    def instruction_turns(self, *, last_block: int) -> dict[int, Conditioning]:
        """The rollout's instruction changes up to ``last_block``: block → conditioning from then on
        (one entry per block where some row issues a new instruction)."""
        if self.turns is None:
            return {}
        blocks = sorted({b for row in self.turns.blocks for b in row if 1 < b <= last_block})
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
    """Encode ``windows`` into model inputs. ``with_instruction`` feeds the instructions (stage 2 on):
    joined over the whole window, and with ``block_frames`` (a causal student's block) also each turn
    on its own with the block it is issued in (from the turn's frame)."""
    video = torch.stack([w.video for w in windows]).to(device)
    latents = vae.encode(video)
    stride = vae.cfg.temporal_stride
    height, width = video.shape[-2:]
    rays = torch.stack([plucker_embedding(w.intrinsics, w.c2w, height, width) for w in windows])
    camera = group_plucker(rays.to(device), temporal_stride=stride)
    cond = i2v_condition(latents[:, :, :1], num_frames=latents.shape[2], temporal_stride=stride)
    text = text_encoder.encode([w.caption for w in windows])
    conditioning = Conditioning(text.tokens.to(device), text.mask.to(device))
    if not with_instruction:
        return PreparedBatch(latents, cond, camera, conditioning)
    inst = text_encoder.encode([w.instruction or "" for w in windows])
    has = torch.tensor([bool(w.instruction) for w in windows], device=device)
    conditioning = Conditioning(
        text.tokens.to(device),
        text.mask.to(device),
        inst.tokens.to(device),
        inst.mask.to(device) & has[:, None],
    )
    if block_frames is None:
        return PreparedBatch(latents, cond, camera, conditioning)
    return PreparedBatch(
        latents, cond, camera, conditioning, encode_turns(windows, text_encoder, stride, block_frames, device)
    )


def encode_turns(
    windows: Sequence[Window],
    text_encoder: TextEncoder,
    temporal_stride: int,
    block_frames: int,
    device: torch.device | str,
) -> TurnTokens:
    """Every window's turns in one encoder call, laid out (row, turn); rows with fewer turns are padded
    with masked-out entries."""
    most = max(1, max(len(w.turns) for w in windows))
    texts = [w.turns[k].instruction if k < len(w.turns) else "" for w in windows for k in range(most)]
    encoded = text_encoder.encode(texts)
    tokens = encoded.tokens.to(device).reshape(len(windows), most, *encoded.tokens.shape[1:])
    real = torch.tensor([[k < len(w.turns) for k in range(most)] for w in windows], device=device)
    mask = encoded.mask.to(device).reshape(len(windows), most, -1) & real[..., None]
    blocks = tuple(
        tuple(
            issue_block(t.frame, temporal_stride=temporal_stride, block_frames=block_frames) for t in w.turns
        )
        for w in windows
    )
    return TurnTokens(tokens, mask, blocks)


def issue_block(frame: int, *, temporal_stride: int, block_frames: int) -> int:
    """The causal block holding video frame ``frame`` (frame 0, the reference, and the first latent
    block's frames: block 1). Video frame v > 0 is in latent frame ceil(v / stride)."""
    latent = -(-frame // temporal_stride)
    return 1 if latent == 0 else (latent - 1) // block_frames + 1
