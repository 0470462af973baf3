"""Stages 1–2 on DeepSpeed (CPU, gloo, world size 1): the loss goes down, stage 2 leaves the camera
encoder bit-identical, and a resumed run ends with exactly the parameters of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import torch

from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.data import Mixture
from worldloop.model import build_world_model, load_preset
from worldloop.model.text import HashingEncoder
from worldloop.model.train.checkpoint import latest_checkpoint
from worldloop.model.train.config import CurriculumPhase, Precision, stage_preset
from worldloop.model.train.loop import Trainer, build_trainer
from worldloop.model.train.objectives.batch import prepare_batch
from worldloop.model.train.objectives.flow_matching import FlowMatchingObjective, flow_matching_loss
from worldloop.model.train.windows import WindowSampler
from worldloop.model.vae import CausalVideoVAE


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, SynthConfig(size=64, frames=17), clips=3, seed=2)
    return Mixture.open(str(out))


def _trainer(
    stage: str,
    clips: Mixture,
    ckpt: Path,
    steps: int,
    *,
    model: dict[str, object] | None = None,
    **update: object,
) -> Trainer:
    cfg = stage_preset(stage).model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=9, steps=steps),),
            "height": 32,
            "width": 32,
            "checkpoint_every": 2,
            "lr": 1e-3,
            **update,
        }
    )
    torch.manual_seed(0)
    mcfg = load_preset(cfg.model_preset).model_copy(update=model or {})
    world = build_world_model(mcfg)
    vae = CausalVideoVAE(mcfg.vae)
    return build_trainer(
        cfg, world, vae=vae, text_encoder=HashingEncoder(dim=mcfg.text_dim), data=clips, checkpoint_dir=ckpt
    )


def _fixed_loss(trainer: Trainer, clips: Mixture) -> float:
    """The flow-matching loss of 8 fixed windows at fixed noise levels and noise: the training losses
    themselves each draw their own σ, so their spread hides 24 steps of progress."""
    model = trainer.modules["model"]
    windows = WindowSampler(clips, frames=9, height=32, width=32, seed=123).batch(range(8))
    objective = cast(FlowMatchingObjective, trainer.objective)
    batch = prepare_batch(
        windows, vae=trainer.vae, text_encoder=objective.text_encoder, with_instruction=False, i2v=model.cfg
    )
    generators = [torch.Generator().manual_seed(i) for i in range(8)]
    with torch.no_grad():
        return float(
            flow_matching_loss(model, batch, shift=trainer.cfg.shift, per_frame=False, generators=generators)
        )


def test_stage_action_lowers_its_loss_and_checkpoints(clips: Mixture, tmp_path: Path) -> None:
    # Without the anchor (i2v_anchor): anchored, an untrained model already starts at the prior's loss
    # (here 0.15 vs 1.09), and what is left takes more than 24 steps to move.
    trainer = _trainer("action", clips, tmp_path, steps=24, batch_size=2, model={"i2v_anchor": None})
    before = _fixed_loss(trainer, clips)
    result = trainer.run()
    assert result.steps == 24 and len(result.losses) == 24
    assert all(torch.isfinite(torch.tensor(result.losses)))
    after = _fixed_loss(trainer, clips)
    assert after < 0.9 * before, (before, after, result.losses)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000024"
    assert len(list(tmp_path.glob("step-*"))) == 2  # older checkpoints pruned


def test_stage_instruction_keeps_the_camera_encoder_bit_identical(clips: Mixture, tmp_path: Path) -> None:
    trainer = _trainer(
        "instruction", clips, tmp_path, steps=4
    )  # zero-init outputs: grads reach inward by step 3
    before = {n: p.detach().clone() for n, p in trainer.modules["model"].named_parameters()}
    trainer.run()
    after = dict(trainer.modules["model"].named_parameters())
    camera = [n for n in before if n.startswith("camera_encoder.")]
    assert camera and all(torch.equal(before[n], after[n]) for n in camera)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert any(n.startswith("experts.") for n in changed)
    assert any(n.startswith("interaction.") for n in changed)


def test_resumed_run_matches_an_uninterrupted_one(clips: Mixture, tmp_path: Path) -> None:
    straight = _trainer("action", clips, tmp_path / "a", steps=6)
    full = straight.run()
    first = _trainer("action", clips, tmp_path / "b", steps=6)
    part = first.run(max_steps=3)  # stops after step 3, as a kill would after its last checkpoint
    assert part.steps == 3
    resumed = _trainer("action", clips, tmp_path / "b", steps=6)
    rest = resumed.run()
    assert rest.resumed_from == 3 and rest.steps == 6
    assert rest.losses == full.losses[3:]
    a, b = (
        dict(straight.modules["model"].named_parameters()),
        dict(resumed.modules["model"].named_parameters()),
    )
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_bf16_training_runs_and_lowers_its_loss(clips: Mixture, tmp_path: Path) -> None:
    """bf16 (the GPU precision): fp32 batches from the data path are cast at the model's boundary."""
    trainer = _trainer("instruction", clips, tmp_path, steps=8, batch_size=2, precision=Precision.bf16)
    result = trainer.run()
    assert next(trainer.modules["model"].parameters()).dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert sum(result.losses[-3:]) < sum(result.losses[:3]), result.losses
