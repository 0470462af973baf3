"""Multi-turn windows condition the bidirectional model per latent frame (issue 17): a stage-2 step's
model call holds each turn's own tokens and shows a frame only the turn in force there; the stage-3
scores (teacher and critic) see each frame with the turn the student had at its block."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from multi_turn_clips import FRAMES, SIZE, two_turn_dataset, two_turn_window
from one_step_distill import one_step_distill

from worldloop.data import Mixture
from worldloop.model import Conditioning, WorldModel, build_world_model, load_preset
from worldloop.model.text import HashingEncoder
from worldloop.model.train.config import CurriculumPhase, stage_preset
from worldloop.model.train.objectives.base import RankBatch
from worldloop.model.train.objectives.batch import issue_block, onset_latent_frame, prepare_batch
from worldloop.model.train.objectives.flow_matching import FlowMatchingObjective
from worldloop.model.train.windows import Turn, Window
from worldloop.model.vae import CausalVideoVAE

T = 1 + (FRAMES - 1) // 4  # latent frames of a window
P = (SIZE // 16) ** 2  # tokens per latent frame (8× VAE, 2×2 patches)


@pytest.fixture(scope="module")
def two_turn_clip(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    return two_turn_dataset(tmp_path_factory)


def _expected(window: Window, *, block_frames: int | None = None) -> list[int]:
    """Per latent frame, the window's turn in force there (-1: none yet); with ``block_frames`` the
    one in force at the frame's causal block (latent frame 0 goes with block 1)."""
    if block_frames is None:
        starts = [onset_latent_frame(t.frame, temporal_stride=4) for t in window.turns]
        at = list(range(T))
    else:
        starts = [issue_block(t.frame, temporal_stride=4, block_frames=block_frames) for t in window.turns]
        at = [1 if j == 0 else (j - 1) // block_frames + 1 for j in range(T)]
    return [sum(s <= a for s in starts) - 1 for a in at]


def _stage2(num_layers: int | None = None) -> tuple[FlowMatchingObjective, WorldModel, HashingEncoder]:
    cfg = stage_preset("instruction").model_copy(
        update={
            "height": SIZE,
            "width": SIZE,
            "batch_size": 1,
            "curriculum": (CurriculumPhase(frames=FRAMES, steps=1),),
        }
    )
    mcfg = load_preset("tiny")
    if num_layers is not None:
        mcfg = mcfg.model_copy(update={"num_layers": num_layers})
    torch.manual_seed(0)
    model = build_world_model(mcfg)
    for expert in model.experts:  # the zero-initialised head would make every output equal
        torch.nn.init.normal_(expert.head.head.weight, std=0.05)
    encoder = HashingEncoder(dim=mcfg.text_dim)
    objective = FlowMatchingObjective(cfg, model, vae=CausalVideoVAE(mcfg.vae), text_encoder=encoder)
    return objective, model, encoder


def _loss(
    objective: FlowMatchingObjective, model: WorldModel, window: Window
) -> tuple[float, dict[str, Any]]:
    """One stage-2 micro-batch of ``window``; returns the loss and the model call's kwargs and output."""
    seen: dict[str, Any] = {}

    def forward(x: torch.Tensor, **kw: Any) -> torch.Tensor:
        seen.update(kw, out=model(x, **kw))
        return seen["out"]  # type: ignore[no-any-return]

    batch = RankBatch([window], [0], first=0, global_batch=1, first_row=0, device=torch.device("cpu"))
    with torch.no_grad():
        loss, _ = objective.loss(batch, forward)
    return float(loss), seen


def test_a_stage2_step_shows_each_frame_the_turn_in_force_there(two_turn_clip: Mixture) -> None:
    window = two_turn_window(two_turn_clip)
    objective, model, encoder = _stage2()
    masks: list[torch.Tensor] = []
    hooks = [
        expert.blocks[0].cross_attn.register_forward_pre_hook(
            lambda m, args, kw: masks.append(kw["token_context_mask"]), with_kwargs=True
        )
        for expert in model.experts
    ]
    _, seen = _loss(objective, model, window)
    for h in hooks:
        h.remove()
    # The call holds each turn's own tokens (nothing joined) and each latent frame's turn.
    cond: Conditioning = seen["conditioning"]
    assert cond.instruction_tokens is None and cond.turns is not None
    for k, turn in enumerate(window.turns):
        alone = encoder.encode([turn.instruction])
        assert torch.equal(cond.turns.tokens[0, k][cond.turns.mask[0, k]], alone.tokens[0][alone.mask[0]])
    expected = _expected(window)
    assert cond.turns.frame_turn[0].tolist() == expected
    assert expected[0] == -1 or window.turns[0].frame == 0
    assert expected.count(1) > 0 and expected.index(1) == onset_latent_frame(
        window.turns[1].frame, temporal_stride=4
    )
    # In the cross-attention, every token of a frame sees exactly its turn's interaction tokens.
    (mask,) = [m for m in masks if m.shape[0]]  # the one expert that ran the row
    text_len, n = model.cfg.text_len, model.cfg.num_interaction_tokens
    inter = mask[0, :, text_len:].unflatten(1, (2, n))  # (F·P, K, n)
    for token in range(T * P):
        turn = expected[token // P]
        assert inter[token].all(dim=1).tolist() == inter[token].any(dim=1).tolist() == [turn == 0, turn == 1]


def test_turn_two_reaches_only_the_frames_after_its_onset(two_turn_clip: Mixture) -> None:
    # One layer, so that bidirectional self-attention cannot carry a frame's text to another frame:
    # the model output before the second onset must not depend on the second turn's text.
    window = two_turn_window(two_turn_clip)
    second = onset_latent_frame(window.turns[1].frame, temporal_stride=4)
    other = replace(
        window, turns=(window.turns[0], Turn("a dragon lands on the roof", window.turns[1].frame))
    )
    objective, model, _ = _stage2(num_layers=1)
    loss, seen = _loss(objective, model, window)
    loss_other, seen_other = _loss(objective, model, other)
    a, b = seen["out"], seen_other["out"]
    assert torch.equal(a[:, :, :second], b[:, :, :second])
    assert not torch.allclose(a[:, :, second:], b[:, :, second:])
    assert loss != loss_other


def test_score_conditioning_gives_each_frame_its_blocks_turn(two_turn_clip: Mixture) -> None:
    window = two_turn_window(two_turn_clip)
    cfg = load_preset("tiny")
    torch.manual_seed(0)
    vae, encoder = CausalVideoVAE(cfg.vae), HashingEncoder(dim=cfg.text_dim)
    batch = prepare_batch([window], vae=vae, text_encoder=encoder, with_instruction=True, block_frames=2)
    by_block = _expected(window, block_frames=2)
    full = batch.score_conditioning()
    assert full.turns is not None and full.turns.frame_turn[0].tolist() == by_block
    window_of_4 = batch.score_conditioning(first=2, num_frames=5)  # stage 4: a window of the rollout
    assert window_of_4.turns is not None and window_of_4.turns.frame_turn[0].tolist() == by_block[2:7]
    assert batch.conditioning.turns is not None
    assert batch.conditioning.turns.frame_turn[0].tolist() == _expected(window)
    # the student's turns start at their block, never after the latent frame they were issued in
    assert all(b >= f for b, f in zip(by_block, _expected(window), strict=True))
    plain = prepare_batch([window], vae=vae, text_encoder=encoder, with_instruction=False)
    assert plain.score_conditioning() is plain.conditioning and plain.conditioning.turns is None


def test_stage3_scores_see_per_block_turns(two_turn_clip: Mixture, tmp_path: Path) -> None:
    trainer, _, _, _ = one_step_distill(two_turn_clip, tmp_path, frames=FRAMES, size=SIZE)
    objective = trainer.objective
    calls: dict[str, list[Conditioning]] = {"teacher": [], "critic": []}
    hooks = [
        module.register_forward_pre_hook(
            lambda m, args, kw, name=name: calls[name].append(kw["conditioning"]), with_kwargs=True
        )
        for name, module in (("teacher", objective.teacher), ("critic", objective.critic))
    ]
    window = objective.inputs
    seen_windows: list[Window] = []

    def inputs(batch: RankBatch) -> Any:
        seen_windows.extend(batch.windows)
        return window(batch)

    objective.inputs = inputs
    trainer.run()
    for h in hooks:
        h.remove()
    expected = _expected(seen_windows[0], block_frames=2)
    assert len({tuple(t.frame for t in w.turns) for w in seen_windows}) == 1  # one clip, whole windows
    for name, conds in calls.items():
        with_turns = [c for c in conds if c.turns is not None]
        assert with_turns, name  # the critic's flow matching, the generator's real and fake scores
        assert all(c.instruction_tokens is None for c in conds)  # nothing joined, no one-instruction call
        for c in with_turns:
            assert c.turns is not None and c.turns.frame_turn[0].tolist() == expected, name
    # CFG's unconditional branch (teacher only) has no instruction at all
    assert any(c.turns is None for c in calls["teacher"]) and all(
        c.turns is not None for c in calls["critic"]
    )
