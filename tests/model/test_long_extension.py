"""Stage 4: rollouts past the training length with random actions, windowed DMD, teacher forcing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.data import Mixture
from worldloop.model import build_world_model, load_preset
from worldloop.model.text import HashingEncoder
from worldloop.model.train.config import CurriculumPhase, stage_preset
from worldloop.model.train.loop import build_trainer
from worldloop.model.train.objectives.long_extension import random_actions
from worldloop.model.vae import CausalVideoVAE


def test_random_actions_are_seeded_runs_of_keys() -> None:
    a = random_actions(np.random.default_rng(3), 50)
    assert len(a) == 50 and a == random_actions(np.random.default_rng(3), 50)
    assert len({f.label() for f in a}) > 1


def test_long_extension_mixes_long_rollouts_and_teacher_forcing(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", SynthConfig(size=64, frames=25), clips=2, seed=9)
    clips = Mixture.open(str(tmp_path / "data"))
    cfg = stage_preset("long")
    cfg = cfg.model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=25, steps=6),),  # 3 real blocks
            "height": 32,
            "width": 32,
            "log_every": 1,
            "distill": cfg.distill.model_copy(update={"critic_steps_per_generator": 1}),  # type: ignore[union-attr]
        }
    )
    torch.manual_seed(0)
    model = build_world_model(load_preset("tiny"))
    seen: list[dict[str, float]] = []
    trainer = build_trainer(
        cfg,
        model,
        vae=CausalVideoVAE(model.cfg.vae),
        text_encoder=HashingEncoder(dim=384),
        data=clips,
        checkpoint_dir=tmp_path / "ckpt",
        on_metrics=lambda step, m: seen.append(m),
    )
    teacher = {n: p.clone() for n, p in trainer.modules["teacher"].named_parameters()}
    student = {n: p.detach().clone() for n, p in trainer.modules["student"].named_parameters()}
    result = trainer.run()
    assert result.steps == 6 and len(seen) == 6
    forced = [m for m in seen if m["teacher_forcing"] == 1.0]
    free = [m for m in seen if m["teacher_forcing"] == 0.0]
    assert forced and free
    assert all(m["rollout_blocks"] == 3 for m in forced)
    assert all(4 <= m["rollout_blocks"] <= 8 for m in free)  # past the 3 blocks of any training clip
    assert all(m["window_frames"] == 1 + 2 * 2 for m in seen)  # the frame before + 2 window blocks
    assert all(torch.equal(p, teacher[n]) for n, p in trainer.modules["teacher"].named_parameters())
    assert any(not torch.equal(p, student[n]) for n, p in trainer.modules["student"].named_parameters())
    assert (tmp_path / "ckpt" / "step-00000006" / "critic.safetensors").exists()
