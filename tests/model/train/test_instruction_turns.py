"""Instructions are issued at a block, in training as in serving: a window knows the frame its
instruction was issued at (and in which form: imperative or descriptive); the causal student's rollout
holds the instruction back until that block and recaches there, exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clip_datasets import DOOR, make_dataset
from one_step_distill import one_step_distill

from worldloop.data import Mixture
from worldloop.model import load_preset
from worldloop.model.text import HashingEncoder
from worldloop.model.train.objectives.batch import issue_block, prepare_batch
from worldloop.model.train.windows import WindowSampler, cut_window
from worldloop.model.vae import CausalVideoVAE


@pytest.fixture(scope="module")
def door_clips(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    root = tmp_path_factory.mktemp("door")
    make_dataset(str(root), clips=2, per_shard=2, frames=17, size=32, interaction_onset=10)
    return Mixture.open(str(root))


def test_a_window_knows_when_and_how_its_instruction_was_issued(door_clips: Mixture) -> None:
    clip = door_clips.load(door_clips.order(frames=17, seed=0).locate(0))
    forms = set()
    for seed in range(40):
        w = cut_window(clip, np.random.default_rng(seed), frames=17, height=32, width=32, long_prob=0.5)
        assert w.instruction_frame == 10 and DOOR.text in w.caption
        forms.add(w.instruction)
    assert forms == {DOOR.instruction, DOOR.text}  # imperative and descriptive
    before = cut_window(clip, np.random.default_rng(0), frames=9, height=32, width=32, long_prob=0.5)
    if before.instruction is None:  # a window that ends before the onset: nothing issued yet
        assert DOOR.text not in before.caption
    later = [
        cut_window(clip, np.random.default_rng(s), frames=5, height=32, width=32, long_prob=0.5)
        for s in range(30)
    ]
    assert {w.instruction_frame for w in later if w.instruction} <= {0, 1, 2, 3, 4}  # relative to the start
    assert any(w.instruction is None for w in later) and any(w.instruction for w in later)


def test_issue_block_maps_video_frames_to_causal_blocks() -> None:
    # stride 4, blocks of 2 latent frames: frame 0 and frames 1-8 are block 1, frames 9-16 block 2
    assert [issue_block(v, temporal_stride=4, block_frames=2) for v in (0, 1, 8, 9, 16, 17)] == [
        1,
        1,
        1,
        2,
        2,
        3,
    ]


def test_stage3_rollouts_recache_exactly_once_where_the_instruction_is_issued(
    door_clips: Mixture, tmp_path: Path
) -> None:
    trainer, model, vae, encoder = one_step_distill(door_clips, tmp_path, frames=17, size=32)
    batch = prepare_batch(
        WindowSampler(door_clips, frames=17, height=32, width=32, seed=0).batch([0]),
        vae=vae,
        text_encoder=encoder,
        with_instruction=True,
        block_frames=2,
    )
    assert batch.instruction_blocks == (2,)  # frame 10: block 2
    assert batch.conditioning_at(1).instruction_mask.sum() == 0  # type: ignore[union-attr]
    assert batch.turns is not None
    assert torch.equal(batch.conditioning_at(2).instruction_mask, batch.turns.mask[:, 0])  # type: ignore[arg-type]
    calls: list[int] = []
    original = model.recache

    def spy(cache, conditioning):  # type: ignore[no-untyped-def]
        calls.append(int(conditioning.instruction_mask.sum()))
        return original(cache, conditioning)

    model.recache = spy  # type: ignore[method-assign]
    trainer.run()
    assert len(calls) == 2 and all(n > 0 for n in calls)  # one per rollout (critic's, generator's)


class Recording(HashingEncoder):
    """The hashing encoder, keeping every text it was asked to encode."""

    def __init__(self) -> None:
        super().__init__(dim=384)
        self.texts: list[str] = []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.texts.extend(texts)
        return super().encode(texts)


def test_a_model_fed_the_turns_reads_the_scene_caption_alone(door_clips: Mixture) -> None:
    """Stage 1 reads the caption with the interaction appended; stage 2 on reads the scene caption beside
    the turns, as serving gives a player's prompt and the instruction at its block."""
    window = WindowSampler(door_clips, frames=17, height=32, width=32, seed=0).sample(0)
    assert window.turns and DOOR.text in window.caption
    assert window.prompt and DOOR.text not in window.prompt and window.caption.startswith(window.prompt)
    vae = CausalVideoVAE(load_preset("tiny").vae)
    for fed, scene in ((False, window.caption), (True, window.prompt)):
        encoder = Recording()
        prepare_batch([window], vae=vae, text_encoder=encoder, with_instruction=fed)
        assert encoder.texts[0] == scene
        assert encoder.texts[1:] == ([t.instruction for t in window.turns] if fed else [])
