"""Stage 2's counterfactual pairs: a window with turns is paired with the same window of its clip's
twin (the same shot with no event and no instruction), both are noised alike, and the loss adds the
error of the pair's velocity difference — what the instruction alone has to change."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from clip_datasets import _frames, _meta
from multi_turn_clips import instruction_objective

from worldloop.components.synthworld import EventKind, SynthConfig
from worldloop.components.synthworld.writer import write_dataset
from worldloop.data import TWIN_SUFFIX, ClipPayload, Mixture, shard_path, write_index, write_shard
from worldloop.model.train.config import TrainConfig, stage_preset
from worldloop.model.train.objectives.base import RankBatch
from worldloop.model.train.objectives.batch import prepare_batch
from worldloop.model.train.objectives.flow_matching import FlowMatchingObjective, flow_matching_velocities
from worldloop.model.train.windows import Window, WindowSampler
from worldloop.video import encode_mp4

SIZE, FRAMES, WINDOW = 32, 17, 13


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    """Two SynthWorld clips with a night falling, each with its counterfactual twin."""
    root = tmp_path_factory.mktemp("twins")
    cfg = SynthConfig(size=SIZE, frames=FRAMES, map_cells=16, event_kinds=(EventKind.night,), twins=True)
    write_dataset(root, cfg, clips=2, seed=0)
    return Mixture.open(str(root))


def _paired(data: Mixture, *, seed: int = 0) -> list[Window]:
    sampler = WindowSampler(data, frames=WINDOW, height=SIZE, width=SIZE, seed=seed, twins=True)
    return [sampler.sample(i) for i in range(8)]


def test_a_window_with_turns_carries_its_twins_same_frames(twins: Mixture) -> None:
    windows = _paired(twins)
    with_turns = [w for w in windows if w.turns]
    assert with_turns and len(with_turns) < len(windows)  # the twins are sampled on their own too
    for w in windows:
        if not w.turns:
            assert w.twin is None
            continue
        twin = w.twin
        assert twin is not None and twin.turns == () and twin.twin is None
        assert twin.caption == w.prompt and twin.prompt == w.prompt  # the scene, without the instruction
        assert torch.equal(twin.c2w, w.c2w) and torch.equal(twin.intrinsics, w.intrinsics)
        onset = w.turns[0].frame
        # the same frames: equal up to video coding before the instruction, the event after it
        before = (w.video[:, :onset] - twin.video[:, :onset]).abs().mean()
        after = (w.video[:, -1] - twin.video[:, -1]).abs().mean()
        assert after > 5 * before
    # without pairing the sampler cuts the same windows, alone
    plain = WindowSampler(twins, frames=WINDOW, height=SIZE, width=SIZE, seed=0)
    for i, w in enumerate(windows):
        alone = plain.sample(i)
        assert alone.twin is None and torch.equal(alone.video, w.video) and alone.turns == w.turns


def test_a_twin_that_is_not_the_same_shot_is_refused(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        payloads = []
        for key, frames, onset in (("c0000", 9, 3), ("c0000" + TWIN_SUFFIX, 13, None)):
            path = Path(tmp) / f"{key}.mp4"
            encode_mp4(_frames(0, frames, 16), path, fps=16)
            payloads.append(ClipPayload(_meta(key, frames, 16, onset), path.read_bytes()))
        write_index(str(tmp_path), "test", [write_shard(str(tmp_path), shard_path(0), payloads)])
    sampler = WindowSampler(Mixture.open(str(tmp_path)), frames=9, height=16, width=16, seed=0, twins=True)
    with pytest.raises(ValueError, match="a twin is the same shot"):
        for i in range(4):
            sampler.sample(i)


def _objective(weight: float) -> FlowMatchingObjective:
    return instruction_objective(size=SIZE, frames=WINDOW, caption_dropout=0.0, counterfactual_weight=weight)


def test_the_pair_is_noised_alike_and_the_loss_adds_the_weighted_gap(twins: Mixture) -> None:
    window = next(w for w in _paired(twins) if w.twin is not None)
    assert window.twin is not None
    objective = _objective(3.0)
    batch = RankBatch([window], [5], first=5, global_batch=1, first_row=0, device=torch.device("cpu"))
    with torch.no_grad():
        loss, metrics = objective.loss(batch, objective.model)
        inputs = prepare_batch(
            [window, window.twin],
            vae=objective.vae,
            text_encoder=objective.text_encoder,
            with_instruction=True,
            i2v=objective.model.cfg,
        )
        seed = objective.cfg.seed * 1_000_003 + 5
        gens = [torch.Generator().manual_seed(seed) for _ in range(2)]
        v, target = flow_matching_velocities(
            objective.model, inputs, shift=objective.cfg.shift, per_frame=False, generators=gens
        )
    # the same σ and noise: the targets differ by the clean latents alone
    z = inputs.latents
    torch.testing.assert_close(target[0] - target[1], -(z[0] - z[1]), rtol=0, atol=1e-5)
    gap = F.mse_loss((v[0] - v[1])[:, 1:], (target[0] - target[1])[:, 1:])
    assert metrics["counterfactual"] == pytest.approx(float(gap), rel=1e-5)
    expected = F.mse_loss(v[:, :, 1:], target[:, :, 1:]) + 3.0 * gap
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(gap) > 0
    # without the weight the twin stays out of the batch: the window's own flow-matching loss
    plain = _objective(0.0)
    with torch.no_grad():
        alone, extra = plain.loss(batch, plain.model)
    expected_alone = F.mse_loss(v[:1, :, 1:], target[:1, :, 1:])
    assert extra == {} and float(alone) == pytest.approx(float(expected_alone), rel=1e-5)


def test_only_stage_two_pairs_instructions() -> None:
    action = stage_preset("action").model_dump()
    with pytest.raises(ValueError, match="only stage instruction"):
        TrainConfig.model_validate(action | {"counterfactual_weight": 1.0})
    instruction = stage_preset("instruction").model_dump() | {"counterfactual_weight": 1.0}
    assert TrainConfig.model_validate(instruction).counterfactual_weight == 1.0
