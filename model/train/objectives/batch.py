"""World-model inputs of a batch of windows (stages 1–4): latents from the frozen VAE, grouped Plücker
rays, the I2V condition and the encoded captions and instruction turns.

A window's turns condition every model on the instruction in force where it generates: the
bidirectional model (stages 1–2, and the scores of stages 3–4) per latent frame through a masked
cross-attention (:class:`~worldloop.model.arch.world_model.InstructionTurns`), the causal student per
block through its KV cache, recached at each new turn (:meth:`PreparedBatch.instruction_turns`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.warp import i2v_stills
from worldloop.model.arch.world_model import Conditioning, InstructionTurns, i2v_condition
from worldloop.model.camera.plucker import plucker_embedding
from worldloop.model.config import ModelConfig
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.windows import Window
from worldloop.model.vae.autoencoder import CausalVideoVAE


@dataclass(frozen=True)
class TurnTokens:
    """Every row's turns, encoded: row r's turn k is ``tokens[r, k]`` (``mask`` False past its turns),
    issued in latent frame ``latent_frames[r][k]`` (:func:`onset_latent_frame`)."""

    tokens: Tensor  # (B, K, L, D)
    mask: Tensor  # (B, K, L) bool
    latent_frames: tuple[tuple[int, ...], ...]  # per row, ascending
    block_frames: int | None = None  # the causal student's block size (stages 3–4)

    @property
    def blocks(self) -> tuple[tuple[int, ...], ...]:
        """Per row, the causal block each turn is issued in (ascending)."""
        if self.block_frames is None:
            raise ValueError("turns have no causal blocks: prepare the batch with block_frames=")
        f = self.block_frames
        return tuple(tuple(latent_block(j, block_frames=f) for j in row) for row in self.latent_frames)

    def frame_turn(self, num_frames: int, *, by_block: bool = False) -> Tensor:
        """(B, T) long: per latent frame, the turn in force there (the last one issued at or before
        it; -1 before the first). ``by_block``: the turn in force at the frame's causal block instead —
        what the causal student saw there (latent frame 0 is block 1's: the rollout sets block 1's
        conditioning before it commits the reference)."""
        at, issued = torch.arange(num_frames), self.latent_frames  # (T,) where each frame is
        if by_block:
            issued = self.blocks
            assert self.block_frames is not None  # blocks raised otherwise
            at = (at - 1).clamp_min(0) // self.block_frames + 1
        most, never = self.tokens.shape[1], num_frames + 1  # padding turns: issued after every frame
        starts = torch.tensor([list(row) + [never] * (most - len(row)) for row in issued])  # (B, K)
        return ((starts[:, None, :] <= at[None, :, None]).sum(dim=2) - 1).to(self.tokens.device)


@dataclass(frozen=True)
class PreparedBatch:
    """Model inputs of a batch, computed without gradients (frozen VAE and text encoder)."""

    latents: Tensor  # (B, C, T, h, w)
    cond: Tensor  # (B, stride + C, T, h, w)
    camera: Tensor  # (B, T, 6·stride, H, W)
    conditioning: Conditioning  # scene text, and (when fed) each instruction over the latent frames it holds
    turns: TurnTokens | None = None  # the instructions (when fed), each with where it is issued
    # What the I2V channels of frames ≥ 1 carry, when the model conditions on it: frame 0 held still
    # (B, C, 1, h, w), or each frame's encoded view through the plane (B, C, T, h, w; i2v_warp_pixels).
    still: Tensor | None = None

    @property
    def instruction_blocks(self) -> tuple[int | None, ...]:
        """Per row, the block its first instruction is issued in (None without any)."""
        return () if self.turns is None else tuple(b[0] if b else None for b in self.turns.blocks)

    def conditioning_at(self, block: int) -> Conditioning:
        """The conditioning in force at ``block`` of a causal rollout: for each row, the instruction it
        issued last at or before that block (a player types it there; serving recaches then), none
        before its first."""
        c, turns = self.conditioning, self.turns
        if turns is None:
            return c
        rows = range(len(turns.latent_frames))
        latest = [sum(1 for b in turns.blocks[r] if b <= block) - 1 for r in rows]
        pick = torch.tensor([max(k, 0) for k in latest], device=turns.tokens.device)
        index = torch.arange(len(pick), device=pick.device)
        active = torch.tensor([k >= 0 for k in latest], device=turns.mask.device)[:, None]
        return Conditioning(
            c.text_tokens, c.text_mask, turns.tokens[index, pick], turns.mask[index, pick] & active
        )

    def instruction_turns(self, *, last_block: int) -> dict[int, Conditioning]:
        """The rollout's instruction changes up to ``last_block``: block → conditioning from then on
        (one entry per block where some row issues a new instruction)."""
        if self.turns is None:
            return {}
        blocks = sorted({b for row in self.turns.blocks for b in row if 1 < b <= last_block})
        return {b: self.conditioning_at(b) for b in blocks}

    def score_conditioning(self, *, first: int = 0, num_frames: int | None = None) -> Conditioning:
        """What the bidirectional scores (stages 3–4: teacher and critic) judge a student rollout by:
        latent frames ``first .. first + num_frames − 1`` (default: to the end), each with the turn
        the student had in force at its block (:meth:`TurnTokens.frame_turn` ``by_block``)."""
        c, turns = self.conditioning, self.turns
        if turns is None:
            return c
        assert c.turns is not None  # prepare_batch sets both
        total = self.latents.shape[2]
        last = total if num_frames is None else first + num_frames
        frame_turn = turns.frame_turn(total, by_block=True)[:, first:last]  # (B, last − first)
        return replace(c, turns=replace(c.turns, frame_turn=frame_turn))


@torch.no_grad()
def prepare_batch(
    windows: Sequence[Window],
    *,
    vae: CausalVideoVAE,
    text_encoder: TextEncoder,
    with_instruction: bool,
    device: torch.device | str = "cpu",
    block_frames: int | None = None,
    i2v: ModelConfig | None = None,
) -> PreparedBatch:
    """Encode ``windows`` into model inputs. ``with_instruction`` feeds the instructions (stage 2 on):
    each turn encoded on its own, in force from the latent frame it is issued in (a bidirectional
    model's per-frame turns, :class:`InstructionTurns`), and with ``block_frames`` (a causal student's
    block) from the block that holds that frame too. ``i2v``: the model the batch is for, whose I2V
    channels carry the reference held still (``i2v_still``) or each frame's view of it through the plane
    (``i2v_warp_pixels``); None: Wan's layout (zeros after frame 0)."""
    video = torch.stack([w.video for w in windows]).to(device)
    latents = vae.encode(video)
    stride = vae.cfg.temporal_stride
    height, width = video.shape[-2:]
    rays = torch.stack([plucker_embedding(w.intrinsics, w.c2w, height, width) for w in windows])
    camera = group_plucker(rays.to(device), temporal_stride=stride)
    reference = latents[:, :, :1]
    still_latent = (
        None
        if i2v is None
        else i2v_stills(i2v, vae, reference=reference, image=video[:, :, 0], camera=camera)
    )
    cond = i2v_condition(reference, num_frames=latents.shape[2], temporal_stride=stride, still=still_latent)
    # Fed the turns, a model reads the scene caption beside them, as in serving (prompt, then each
    # instruction at its block); without them, the caption that also describes the clip's events.
    text = text_encoder.encode([w.prompt if with_instruction else w.caption for w in windows])
    conditioning = Conditioning(text.tokens.to(device), text.mask.to(device))
    if not with_instruction:
        return PreparedBatch(latents, cond, camera, conditioning, still=still_latent)
    turns = encode_turns(windows, text_encoder, stride, block_frames, device)
    per_frame = InstructionTurns(turns.tokens, turns.mask, turns.frame_turn(latents.shape[2]))
    return PreparedBatch(latents, cond, camera, replace(conditioning, turns=per_frame), turns, still_latent)


def encode_turns(
    windows: Sequence[Window],
    text_encoder: TextEncoder,
    temporal_stride: int,
    block_frames: int | None,
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
    latent_frames = tuple(
        tuple(onset_latent_frame(t.frame, temporal_stride=temporal_stride) for t in w.turns) for w in windows
    )
    return TurnTokens(tokens, mask, latent_frames, block_frames)


def onset_latent_frame(frame: int, *, temporal_stride: int) -> int:
    """The latent frame holding video frame ``frame``: 0 for frame 0 (the reference), else
    ceil(frame / stride) — latent frame j ≥ 1 covers video frames stride·(j−1)+1 .. stride·j.

    A turn issued inside a latent frame is in force over all of it: that latent already encodes the
    event's first video frames (the VAE folds ``stride`` of them into it), just as the causal student
    gets the turn from the start of the block that holds the frame (:func:`issue_block`)."""
    return -(-frame // temporal_stride)


def latent_block(latent: int, *, block_frames: int) -> int:
    """The causal block of latent frame ``latent`` (frame 0, the reference, goes with block 1)."""
    return 1 if latent == 0 else (latent - 1) // block_frames + 1


def issue_block(frame: int, *, temporal_stride: int, block_frames: int) -> int:
    """The causal block holding video frame ``frame`` (frame 0, the reference, and the first latent
    block's frames: block 1). Video frame v > 0 is in latent frame ceil(v / stride)."""
    return latent_block(onset_latent_frame(frame, temporal_stride=temporal_stride), block_frames=block_frames)
