"""Stage 4's real score is the stage-2 model: stage 3 records its teacher's weights hash in the lineage
and keeps the teacher in its checkpoint; stage 4 loads that teacher (not a copy of the stage-3 student),
checks it against the hash, and carries the hash into its own checkpoint and the registry's tags."""

from __future__ import annotations

from pathlib import Path

import pytest
from clip_datasets import make_dataset
from safetensors.torch import load_file, save_file

from worldloop.components.training.run import run_stage
from worldloop.data import read_lineage
from worldloop.model.train.checkpoint import latest_checkpoint, weights_sha256
from worldloop.model.train.config import CurriculumPhase, LongExtensionConfig, TrainConfig, stage_preset


def _config(stage: str, frames: int, steps: int = 1) -> TrainConfig:
    cfg = stage_preset(stage).model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=frames, steps=steps),),
            "height": 32,
            "width": 32,
            "checkpoint_every": 1,
        }
    )
    if cfg.distill is not None:
        cfg = cfg.model_copy(
            update={"distill": cfg.distill.model_copy(update={"critic_steps_per_generator": 1})}
        )
    if cfg.long is not None:
        cfg = cfg.model_copy(
            update={"long": LongExtensionConfig(min_rollout_blocks=2, max_rollout_blocks=2, window_blocks=1)}
        )
    return cfg


def _latest(folder: Path) -> Path:
    found = latest_checkpoint(folder)
    assert found is not None
    return found


def test_stage4_teacher_is_the_stage2_model_carried_through_stage3(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset(str(data), clips=2, per_shard=2, frames=17, size=32)
    sft, distill, long = tmp_path / "sft", tmp_path / "distill", tmp_path / "long"
    # both experts' output heads leave zero (a fresh model's), so the scores disagree and stage 3 moves
    run_stage(_config("instruction", 9, steps=4), data=str(data), out=sft, track=False)
    run_stage(_config("distill", 17, steps=2), data=str(data), out=distill, init=sft, track=False)
    run_stage(_config("long", 17), data=str(data), out=long, init=distill, track=False)

    stage2 = weights_sha256(load_file(str(_latest(sft) / "model.safetensors")))
    student = weights_sha256(load_file(str(_latest(distill) / "model.safetensors")))
    assert stage2 != student  # stage 3 trained the student away from the teacher
    for ckpt in (_latest(distill), _latest(long)):
        lineage = read_lineage(ckpt)
        assert lineage is not None and lineage.teacher is not None
        assert lineage.teacher.stage == "instruction" and lineage.teacher.source == str(sft)
        assert lineage.teacher.weights_sha256 == stage2
        assert weights_sha256(load_file(str(ckpt / "teacher.safetensors"))) == stage2
    assert [s.stage for s in read_lineage(_latest(long)).stages] == ["instruction", "distill", "long"]  # type: ignore[union-attr]

    # a stage-3 checkpoint whose teacher was swapped is refused, naming the mismatch
    altered = _latest(distill) / "teacher.safetensors"
    tensors = load_file(str(altered))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(altered))
    with pytest.raises(ValueError, match="not the teacher its lineage records"):
        run_stage(_config("long", 17), data=str(data), out=tmp_path / "long2", init=distill, track=False)
