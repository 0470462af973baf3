"""Multi-turn instructions, from a SynthWorld clip to training and serving: a clip with two events in
sequence gives its windows two turns, each issued at its own block; the causal student's rollout and
serving's Rollout both recache exactly once at the second instruction, and agree bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from multi_turn_clips import FRAMES, SIZE, two_turn_dataset, two_turn_window
from one_step_distill import one_step_distill

from worldloop.data import Mixture
from worldloop.model import Rollout, WorldModel, tiny
from worldloop.model.camera import parse_action
from worldloop.model.camera.plucker import actions_to_camera
from worldloop.model.distill import self_forcing_rollout
from worldloop.model.text import HashingEncoder
from worldloop.model.train.objectives.batch import issue_block, prepare_batch
from worldloop.model.train.windows import cut_window
from worldloop.model.vae import CausalVideoVAE


@pytest.fixture(scope="module")
def two_turn_clip(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    """A dataset of one SynthWorld clip with two events."""
    return two_turn_dataset(tmp_path_factory)


def test_a_two_turn_clip_gives_its_window_both_turns_at_their_frames(two_turn_clip: Mixture) -> None:
    order = two_turn_clip.order(frames=FRAMES, seed=0)
    clip = next(c for c in (two_turn_clip.load(order.locate(i)) for i in range(8)) if len(c.meta.events) == 2)
    first, second = clip.meta.events
    assert first.interaction is not None and second.interaction is not None
    forms = set()
    for seed in range(16):
        w = cut_window(
            clip, np.random.default_rng(seed), frames=FRAMES, height=SIZE, width=SIZE, long_prob=0.5
        )
        assert [t.frame for t in w.turns] == [first.onset_frame, second.onset_frame]
        assert first.interaction.text in w.caption and second.interaction.text in w.caption
        forms.add(tuple(t.instruction for t in w.turns))
        assert w.instruction == ", then ".join(t.instruction for t in w.turns)  # the whole-window text
    assert (first.interaction.instruction, second.interaction.instruction) in forms
    assert (first.interaction.text, second.interaction.text) in forms
    # Shorter windows: a turn issued before the window's start is in force from its first frame, and
    # a later one replaces it (the first is then no longer part of the window).
    o1, o2 = first.onset_frame, second.onset_frame
    length = min(9, FRAMES - o2)  # short enough to start after both turns
    seen = set()
    for seed in range(60):
        start = int(np.random.default_rng(seed).integers(FRAMES - length + 1))  # cut_window's first draw
        w = cut_window(
            clip, np.random.default_rng(seed), frames=length, height=SIZE, width=SIZE, long_prob=0.5
        )
        texts = [t.instruction for t in w.turns]
        if start >= o2:
            case, frames = "after both", [0]
            assert texts[0] in (second.interaction.instruction, second.interaction.text)
        elif start >= o1:
            case, frames = "between", [0] + ([o2 - start] if o2 < start + length else [])
            assert texts[0] in (first.interaction.instruction, first.interaction.text)
        else:
            case, frames = "before", [o for o in (o1 - start, o2 - start) if o < length]
        assert [t.frame for t in w.turns] == frames, (case, start)
        seen.add(case)
    assert seen == {"after both", "between", "before"}


def test_each_block_sees_the_instruction_in_force_there(two_turn_clip: Mixture) -> None:
    window = two_turn_window(two_turn_clip)
    torch.manual_seed(0)
    cfg = tiny()
    vae, encoder = CausalVideoVAE(cfg.vae), HashingEncoder(dim=cfg.text_dim)
    batch = prepare_batch([window], vae=vae, text_encoder=encoder, with_instruction=True, block_frames=2)
    assert batch.turns is not None
    (b1, b2) = batch.turns.blocks[0]
    assert (b1, b2) == tuple(issue_block(t.frame, temporal_stride=4, block_frames=2) for t in window.turns)
    assert b1 < b2

    def instruction_at(block: int) -> torch.Tensor:
        c = batch.conditioning_at(block)
        assert c.instruction_tokens is not None and c.instruction_mask is not None
        return c.instruction_tokens[0][c.instruction_mask[0]]

    alone = [encoder.encode([t.instruction]) for t in window.turns]
    expected = [a.tokens[0][a.mask[0]] for a in alone]
    assert torch.equal(instruction_at(b1), expected[0]) and torch.equal(instruction_at(b2 - 1), expected[0])
    assert torch.equal(instruction_at(b2), expected[1]) and torch.equal(instruction_at(b2 + 1), expected[1])
    if b1 > 1:
        assert batch.conditioning_at(b1 - 1).instruction_mask.sum() == 0  # type: ignore[union-attr]
    assert sorted(batch.instruction_turns(last_block=b2)) == [b for b in (b1, b2) if b > 1]
    assert sorted(batch.instruction_turns(last_block=b2 - 1)) == [b for b in (b1,) if b > 1]


def test_stage3_recaches_exactly_once_at_the_second_instruction(
    two_turn_clip: Mixture, tmp_path: Path
) -> None:
    trainer, model, _, encoder = one_step_distill(two_turn_clip, tmp_path, frames=FRAMES, size=SIZE)
    clip = two_turn_clip.load(two_turn_clip.order(frames=FRAMES, seed=0).locate(0))
    second = clip.meta.events[1].interaction
    assert second is not None
    forms = [encoder.encode([text]) for text in (second.instruction, second.text)]
    second_forms = [f.tokens[0][f.mask[0]] for f in forms]
    calls: list[bool] = []
    original = model.recache

    def spy(cache, conditioning):  # type: ignore[no-untyped-def]
        tokens = conditioning.instruction_tokens[0][conditioning.instruction_mask[0]]
        calls.append(any(t.shape == tokens.shape and bool(torch.equal(t, tokens)) for t in second_forms))
        return original(cache, conditioning)

    model.recache = spy  # type: ignore[method-assign]
    trainer.run()
    # One generator step = two rollouts (the critic's and the generator's); in each, the second
    # instruction recaches exactly once (the first recaches too when issued after block 1).
    assert sum(calls) == 2, calls
    first_block = issue_block(clip.meta.events[0].onset_frame, temporal_stride=4, block_frames=2)
    assert len(calls) == 2 * (2 if first_block > 1 else 1), calls


def test_serving_and_training_rollouts_agree_over_both_turns(two_turn_clip: Mixture) -> None:
    window = two_turn_window(two_turn_clip)
    torch.manual_seed(0)
    cfg = tiny()
    model = WorldModel(cfg).eval()
    for expert in model.experts:
        torch.nn.init.normal_(expert.head.head.weight, std=0.05)
    rollout = Rollout(
        model,
        vae=CausalVideoVAE(cfg.vae).eval(),
        text_encoder=HashingEncoder(dim=cfg.text_dim),
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(5),
    )
    turn_blocks = [
        issue_block(t.frame, temporal_stride=4, block_frames=cfg.causal.block_frames) for t in window.turns
    ]
    blocks = turn_blocks[-1] + 1
    image = window.video[:, 0][None]
    prompt = "a torch-lit room"
    state, _ = rollout.start(image, prompt=prompt)
    reference = state.reference.clone()
    track = actions_to_camera([parse_action("none")], width=SIZE, height=SIZE, fov_deg=cfg.fov_deg)
    cameras = [rollout._camera(track.c2w, track.intrinsics, 1)]
    served = [reference]
    recaches = []
    for block in range(1, blocks + 1):
        active = [t.instruction for t, b in zip(window.turns, turn_blocks, strict=True) if b <= block]
        actions = [parse_action("w", mouse_dx=0.3)] * rollout.frames_per_block
        track = actions_to_camera(
            actions, width=SIZE, height=SIZE, fov_deg=cfg.fov_deg, motion=cfg.motion, start=state.camera
        )
        cameras.append(rollout._camera(track.c2w, track.intrinsics, 1))
        served.append(rollout.denoise(state, actions, instruction=active[-1] if active else None))
        recaches.append(state.recaches)
    # Serving: the second instruction's block recaches exactly once, and nothing after it does.
    b2 = turn_blocks[1]
    assert recaches[b2 - 1] - recaches[b2 - 2] == 1 and recaches[-1] == recaches[b2 - 1]
    first = window.turns[0].instruction
    turns = {
        b: rollout.conditioning(prompt, t.instruction, batch=1)
        for t, b in zip(window.turns, turn_blocks, strict=True)
        if b > 1
    }
    with torch.no_grad():
        trained = self_forcing_rollout(
            model,
            reference=reference,
            camera=torch.cat(cameras, dim=1),
            conditioning=rollout.conditioning(prompt, first if turn_blocks[0] == 1 else None, batch=1),
            num_blocks=blocks,
            timesteps=rollout.timesteps,
            generator=torch.Generator().manual_seed(5),
            height=SIZE,
            width=SIZE,
            exit_steps=[len(rollout.timesteps) - 1] * blocks,
            turns=turns,
            still=rollout.stills(state, torch.cat(cameras, dim=1)),
        )
    assert trained.recaches == len(turns) == state.recaches
    assert torch.equal(trained.video_latents, torch.cat(served, dim=2))
