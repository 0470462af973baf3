"""Per-frame instruction turns in the bidirectional forward (issue 17): the cross-attention context
holds every turn's interaction tokens and each latent frame's tokens see only the turn in force there
(and the scene text, always); a single turn over the whole clip is today's one-instruction forward."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from worldloop.model import Conditioning, InstructionTurns, WorldModel, i2v_condition, tiny
from worldloop.model.arch.attention import AttentionBackend
from worldloop.model.arch.dit import set_attention_backend, set_gradient_checkpointing
from worldloop.model.arch.transformer_block import CrossAttention

Z = tiny().latent_channels  # latent channels of the tiny preset

SIZE, T = 32, 5  # 4×4 latent → 2×2 patches: P = 4 tokens per frame; 1 + 2 blocks of 2 latent frames


def _model(**update: Any) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(tiny().model_copy(update=update)).eval()
    for expert in model.experts:  # the zero-initialised head would make every output equal
        torch.nn.init.normal_(expert.head.head.weight, std=0.05)
    return model


def _clip(batch: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, Z, T, 4, 4, generator=g)
    timesteps = torch.cat([torch.zeros(batch, 1), torch.full((batch, T - 1), 700.0)], dim=1)
    return {
        "latents": latents,
        "timesteps": timesteps,
        "cond": i2v_condition(latents[:, :, :1], num_frames=T, temporal_stride=4),
        "camera": torch.randn(batch, T, 24, SIZE, SIZE, generator=g),
    }


def _text(batch: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[0, 4:] = False
    return torch.randn(batch, 6, 384, generator=g), mask


def _instructions(batch: int, turns: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, 3, 384) instruction features and their mask (turn k of row b: 3 − k % 2 tokens)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, turns, 3, dtype=torch.bool)
    mask[:, 1::2, 2] = False
    return torch.randn(batch, turns, 3, 384, generator=g), mask


def _turns(frame_turn: list[list[int]], *, seed: int = 2, turns: int = 2) -> Conditioning:
    b = len(frame_turn)
    text, mask = _text(b, seed=1)
    tokens, inst_mask = _instructions(b, turns, seed=seed)
    return Conditioning(text, mask, turns=InstructionTurns(tokens, inst_mask, torch.tensor(frame_turn)))


def _single(cond: Conditioning, turn: int | None) -> Conditioning:
    """``cond``'s text with turn ``turn`` (None: no instruction) as today's one instruction."""
    assert cond.turns is not None
    if turn is None:
        return Conditioning(cond.text_tokens, cond.text_mask)
    turns = cond.turns
    return Conditioning(cond.text_tokens, cond.text_mask, turns.tokens[:, turn], turns.mask[:, turn])


def test_one_turn_over_the_whole_clip_is_the_one_instruction_forward() -> None:
    model, clip = _model(), _clip(2)
    cond = _turns([[0] * T, [0] * T], turns=1)
    with torch.no_grad():
        per_frame = model(**clip, conditioning=cond, causal=False)
        today = model(**clip, conditioning=_single(cond, 0), causal=False)
    assert torch.equal(per_frame, today)


def test_each_frame_sees_only_the_turn_in_force_there() -> None:
    # One layer: a frame's output then depends on the context only through its own cross-attention,
    # so it must equal the one-instruction forward with the instruction in force at that frame.
    model, clip = _model(num_layers=1), _clip(2)
    frame_turn = [[-1, 0, 0, 1, 1], [0, 0, 0, 0, -1]]  # row 1: a padded (absent) turn 1, then none
    cond = _turns(frame_turn)
    cond.turns.mask[1, 1] = False  # type: ignore[union-attr]
    with torch.no_grad():
        out = model(**clip, conditioning=cond, causal=False)
        alone = {k: model(**clip, conditioning=_single(cond, k), causal=False) for k in (0, 1)}
        alone[-1] = model(**clip, conditioning=_single(cond, None), causal=False)
    for row, turns in enumerate(frame_turn):
        for frame, turn in enumerate(turns):
            torch.testing.assert_close(
                out[row, :, frame], alone[turn][row, :, frame], atol=1e-5, rtol=1e-5, msg=(row, frame)
            )
    # The deep model: changing turn 1's text changes nothing in the first block's cross-attention
    # outside turn 1's frames (deeper blocks mix frames through bidirectional self-attention).
    deep, seen = _model(), []
    cross = deep.expert(1).blocks[0].cross_attn
    handle = cross.register_forward_hook(lambda m, args, out: seen.append(out))
    assert cond.turns is not None
    other = _instructions(2, 2, seed=9)[0][:, 1:]
    changed = InstructionTurns(
        torch.cat([cond.turns.tokens[:, :1], other], dim=1), cond.turns.mask, cond.turns.frame_turn
    )
    with torch.no_grad():
        for c in (cond, replace(cond, turns=changed)):
            deep(**clip, conditioning=c, causal=False)
    handle.remove()
    before, after = (s.unflatten(1, (T, -1)) for s in seen)  # (B, T, P, dim)
    assert torch.equal(before[0, :3], after[0, :3]) and torch.equal(before[1], after[1])
    assert not torch.allclose(before[0, 3:], after[0, 3:])


def test_the_cross_attention_mask_follows_frame_turn_per_token() -> None:
    model, clip = _model(), _clip(2)
    frame_turn = [[-1, 0, 0, 1, 1], [1, 1, 0, 0, 0]]
    masks: list[torch.Tensor | None] = []

    def spy(module: CrossAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        masks.append(kwargs["token_context_mask"])

    handle = model.expert(1).blocks[0].cross_attn.register_forward_pre_hook(spy, with_kwargs=True)
    with torch.no_grad():
        model(**clip, conditioning=_turns(frame_turn), causal=False)
    handle.remove()
    (mask,) = masks
    assert mask is not None
    text_len, n = model.cfg.text_len, model.cfg.num_interaction_tokens
    assert mask.shape == (2, T * 4, text_len + 2 * n)  # (B, F·P, Lc)
    text_mask = _text(2, seed=1)[1]
    for row, turns in enumerate(frame_turn):
        for token in range(T * 4):
            turn = turns[token // 4]
            assert torch.equal(mask[row, token, :6], text_mask[row])  # scene text: always (its padding never)
            assert not mask[row, token, 6:text_len].any()
            inter = mask[row, token, text_len:].unflatten(0, (2, n))
            assert inter.all(dim=1).tolist() == [k == turn for k in range(2)]
            assert inter.any(dim=1).tolist() == [k == turn for k in range(2)]


def test_gradient_checkpointing_keeps_the_masked_forward() -> None:
    model, clip = _model(), _clip(2)
    model.train()
    cond = _turns([[-1, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    out = [model(**clip, conditioning=cond, causal=False)]
    set_gradient_checkpointing(model, True)
    out.append(model(**clip, conditioning=cond, causal=False))
    torch.testing.assert_close(out[0], out[1], atol=0, rtol=0)


def test_turns_are_rejected_where_they_cannot_apply() -> None:
    model, clip = _model(), _clip(1)
    cond = _turns([[0, 0, 1, 1]])  # 4 frame indices for a 5-frame clip
    with pytest.raises(ValueError, match="one turn index per latent frame"):
        model(**clip, conditioning=cond, causal=False)
    with pytest.raises(ValueError, match="KV cache holds one instruction"):
        model.set_context(model.new_cache(batch=1, height=SIZE, width=SIZE), cond)
    text, mask = _text(1, seed=1)
    tokens, inst_mask = _instructions(1, 2, seed=2)
    with pytest.raises(ValueError, match="not both"):
        Conditioning(
            text,
            mask,
            tokens[:, 0],
            inst_mask[:, 0],
            InstructionTurns(tokens, inst_mask, cond.turns.frame_turn),
        )  # type: ignore[union-attr]


def test_sage_never_runs_the_masked_cross_attention() -> None:
    # SageAttention takes no mask: choosing it keeps cross-attention (always masked) on SDPA, and
    # `auto` falls back to SDPA for any masked call, so per-frame turns run under every backend.
    model = _model()
    set_attention_backend(model, "sage")
    crosses = [m for m in model.modules() if isinstance(m, CrossAttention)]
    assert crosses and all(m.backend is AttentionBackend.sdpa for m in crosses)
    set_attention_backend(model, "auto")
    clip, cond = _clip(1), _turns([[-1, 0, 0, 1, 1]])
    with torch.no_grad():
        auto = model(**clip, conditioning=cond, causal=False)
        set_attention_backend(model, "sdpa")
        sdpa = model(**clip, conditioning=cond, causal=False)
    assert torch.equal(auto, sdpa)
