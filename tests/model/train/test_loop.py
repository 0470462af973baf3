"""The one training loop (CPU, gloo, world size 1): a step's loss is the objective's loss computed
directly on the samples the loop promises; every objective resumes to exactly the uninterrupted run;
checkpoints carry the VAE and the spec (a distilled one with the student's timesteps); stage 0 trains
the VAE alone and checkpoints it, with latent statistics measured from data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.data import Mixture
from worldloop.model import WorldModel, build_world_model, load_preset
from worldloop.model.spec import ModelSpec, preset_spec, read_spec
from worldloop.model.text import HashingEncoder, TextEncoderConfig
from worldloop.model.train.config import (
    CurriculumPhase,
    LongExtensionConfig,
    Stage,
    TrainConfig,
    stage_preset,
)
from worldloop.model.train.loop import Trainer, build_trainer
from worldloop.model.train.objectives import base
from worldloop.model.train.objectives.batch import prepare_batch
from worldloop.model.train.objectives.flow_matching import flow_matching_loss
from worldloop.model.train.windows import WindowSampler
from worldloop.model.vae import CausalVideoVAE


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, SynthConfig(size=64, frames=17), clips=2, seed=4)
    return Mixture.open(str(out))


def _config(stage: str, **update: object) -> TrainConfig:
    cfg = stage_preset(stage)
    common: dict[str, object] = {"height": 32, "width": 32, "checkpoint_every": 1, "lr": 1e-3}
    if cfg.distill is not None:  # 2 real blocks; rollouts of 2–3 blocks with a 1-block window
        common["distill"] = cfg.distill.model_copy(update={"critic_steps_per_generator": 1})
        common["curriculum"] = (CurriculumPhase(frames=17, steps=2),)
    else:
        common["curriculum"] = (CurriculumPhase(frames=9, steps=2),)
    if cfg.long is not None:
        common["long"] = LongExtensionConfig(min_rollout_blocks=2, max_rollout_blocks=3, window_blocks=1)
    return cfg.model_copy(update={**common, **update})


def _model(stage: str) -> WorldModel:
    torch.manual_seed(0)
    model = build_world_model(load_preset("tiny"))
    if stage in ("distill", "long"):  # as from stage 2: output heads not zero, the scores disagree
        for i in range(model.cfg.num_experts):
            torch.nn.init.normal_(model.expert(i).head.head.weight, std=0.02)
    return model


def _spec() -> ModelSpec:
    hashing = TextEncoderConfig(kind="hashing", dim=384)
    return preset_spec("tiny", height=32, width=32, text_encoder=hashing)


def _trainer(cfg: TrainConfig, clips: Mixture, ckpt: Path, model: WorldModel) -> Trainer:
    vae = CausalVideoVAE(model.cfg.vae)
    encoder = HashingEncoder(dim=model.cfg.text_dim)
    teacher = copy.deepcopy(model) if cfg.stage is Stage.long else None  # as run_stage from stage 2
    return build_trainer(
        cfg,
        model,
        vae=vae,
        text_encoder=encoder,
        data=clips,
        checkpoint_dir=ckpt,
        spec=_spec(),
        teacher=teacher,
    )


def test_a_step_reports_the_mean_loss_of_its_micro_batches(clips: Mixture, tmp_path: Path) -> None:
    """Micro-batch m of step s takes samples (s·M + m)·B onwards; without an optimizer step between
    them both see the initial weights, so the step's loss is their mean computed directly."""
    cfg = _config("action", batch_size=2, grad_accum=2, curriculum=(CurriculumPhase(frames=9, steps=1),))
    model = _model("action")
    fresh = _model("action")
    trainer = _trainer(cfg, clips, tmp_path, model)
    sampler = WindowSampler(clips, frames=9, height=32, width=32, seed=cfg.seed)
    vae = trainer.vae
    assert isinstance(vae, CausalVideoVAE)
    direct = []
    with torch.no_grad():
        for indices in ([0, 1], [2, 3]):
            batch = prepare_batch(
                sampler.batch(indices),
                vae=vae,
                text_encoder=HashingEncoder(dim=384),
                with_instruction=False,
                i2v=fresh.cfg,
            )
            gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + i) for i in indices]
            loss = flow_matching_loss(fresh, batch, shift=cfg.shift, per_frame=False, generators=gens)
            direct.append(float(loss))
    (reported,) = trainer.run().losses
    assert reported == float(torch.tensor(sum(direct) / 2))


@pytest.mark.parametrize("stage", ["vae", "action", "distill", "long"])
def test_every_objective_resumes_to_the_uninterrupted_run(clips: Mixture, tmp_path: Path, stage: str) -> None:
    cfg = _config(stage)
    straight = _trainer(cfg, clips, tmp_path / "a", _model(stage))
    full = straight.run()
    _trainer(cfg, clips, tmp_path / "b", _model(stage)).run(max_steps=1)  # killed after step 1 …
    resumed = _trainer(cfg, clips, tmp_path / "b", _model(stage))
    rest = resumed.run()  # … and resumed
    assert rest.resumed_from == 1 and rest.losses == full.losses[1:]
    for name, module in straight.modules.items():
        after = dict(resumed.modules[name].named_parameters())
        assert all(torch.equal(p, after[n]) for n, p in module.named_parameters()), name
    assert torch.equal(straight.vae.latents_std, resumed.vae.latents_std)
    a, b = (root / "step-00000002" for root in (tmp_path / "a", tmp_path / "b"))
    critic = ["critic", "critic_optimizer"] if stage in ("distill", "long") else []
    for file in ("ema", "optimizer", "vae", *critic):
        x, y = load_file(str(a / f"{file}.safetensors")), load_file(str(b / f"{file}.safetensors"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), file


def test_checkpoints_carry_the_vae_and_the_spec_with_the_students_timesteps(
    clips: Mixture, tmp_path: Path
) -> None:
    cfg = _config("distill", curriculum=(CurriculumPhase(frames=9, steps=1),))
    trainer = _trainer(cfg, clips, tmp_path, _model("distill"))
    folder = trainer.run().checkpoint
    assert folder is not None
    saved = load_file(str(folder / "vae.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in trainer.vae.state_dict().items())
    state = json.loads((folder / "state.json").read_text())
    spec = read_spec(folder)
    assert spec.schedule.timesteps == tuple(state["student_timesteps"]) and spec.schedule.shift == cfg.shift
    assert spec.model == _spec().model and state["config"]["stage"] == "distill"
    files = {p.name for p in folder.iterdir()}
    assert {"teacher.safetensors", "critic.safetensors", "model.safetensors"} <= files


def test_stage_vae_trains_the_vae_alone_and_checkpoints_it_as_the_primary_file(
    clips: Mixture, tmp_path: Path
) -> None:
    cfg = _config("vae", curriculum=(CurriculumPhase(frames=9, steps=8),), lr=2e-3, warmup_steps=0)
    model = _model("action")
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(cfg, clips, tmp_path, model)
    result = trainer.run()
    assert result.steps == 8 and result.losses[-1] < 0.8 * result.losses[0], result.losses
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in untouched.items())  # no DiT step
    folder = result.checkpoint
    assert folder is not None
    files = {p.name for p in folder.iterdir()}
    assert {"vae.safetensors", "ema.safetensors", "optimizer.safetensors", "spec.json"} <= files
    assert "model.safetensors" not in files  # stage 0 holds no world model
    saved = load_file(str(folder / "vae.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in trainer.vae.state_dict().items())
    # latent statistics measured from data before the checkpoint: no longer the defaults 0 / 1
    assert not torch.equal(saved["latents_std"], torch.ones_like(saved["latents_std"]))
    with torch.no_grad():
        video = torch.stack(
            [w.video for w in WindowSampler(clips, frames=9, height=32, width=32, seed=5).batch([0])]
        )
        latents = trainer.vae.encode(video)
    assert 0.2 < float(latents.std()) < 5.0  # ~unit variance for the DiT
    assert (
        read_spec(folder).model == _spec().model
        and json.loads((folder / "state.json").read_text())["config"]["stage"] == "vae"
    )


class ReconstructionObjective(base.Objective):
    """A bare objective on the VAE (for the layout checks below)."""

    def __init__(self, vae: CausalVideoVAE, *, lr: float) -> None:
        self.vae = vae
        params = [p for p in vae.parameters() if p.requires_grad]
        self.trained = (base.TrainedModule("vae", vae, (base.LrGroup("vae", params, lr),), width=64),)
        self.updates = (base.Update("vae", "loss", self.loss),)

    def loss(self, batch: base.RankBatch, forward: base.Forward) -> tuple[Tensor, base.Metrics]:
        video = torch.stack([w.video for w in batch.windows]).to(batch.device)  # (B, 3, F, H, W)
        return F.l1_loss(self.vae.decode(self.vae.encode(video)), video), {}


def test_objectives_that_do_not_fit_the_checkpoint_layout_are_refused(clips: Mixture, tmp_path: Path) -> None:
    vae = CausalVideoVAE(load_preset("tiny").vae)
    bad = ReconstructionObjective(vae, lr=1e-3)
    bad.trained = (*bad.trained, base.TrainedModule("optimizer", torch.nn.Linear(1, 1), (), width=1))
    with pytest.raises(ValueError, match="unique"):
        Trainer(_config("action"), bad, vae=vae, data=clips, checkpoint_dir=tmp_path)
    uneven = ReconstructionObjective(vae, lr=1e-3)
    uneven.trained = (base.TrainedModule("vae", vae, uneven.trained[0].groups, width=64, accumulation=2),)
    with pytest.raises(ValueError, match="accumulation"):
        Trainer(_config("action"), uneven, vae=vae, data=clips, checkpoint_dir=tmp_path)


def test_stage2_trains_each_expert_at_its_own_rate(clips: Mixture, tmp_path: Path) -> None:
    """Adam's first step moves every parameter with a gradient by its group's rate exactly (bias-corrected
    m/√v = ±1), so each expert's largest move is the rate its optimizer group was given."""
    cfg = _config("instruction", batch_size=4, curriculum=(CurriculumPhase(frames=9, steps=1),))
    assert cfg.expert_lr is not None and cfg.expert_lr[0] < cfg.expert_lr[1]  # the preset's own rates
    model = _model("instruction")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer(cfg, clips, tmp_path, model)
    assert trainer.lr_table == {
        "model/expert0": cfg.expert_lr[0],
        "model/expert1": cfg.expert_lr[1],
        "model/interaction": cfg.lr,
    }
    trainer.run()
    for i, lr in enumerate(cfg.expert_lr):
        moved = max(
            float((p.detach() - before[n]).abs().max())
            for n, p in model.named_parameters()
            if n.startswith(f"experts.{i}.")
        )
        assert moved == pytest.approx(lr, rel=0.01), f"expert {i}"
