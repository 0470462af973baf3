"""Stage 3: the Self-Forcing rollout, the DMD generator gradient, and the distillation trainer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.data import Mixture
from worldloop.model import WorldModel, build_world_model, load_preset
from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.world_model import Conditioning, i2v_condition
from worldloop.model.distill import dmd_generator_loss, self_forcing_rollout
from worldloop.model.text import HashingEncoder
from worldloop.model.train.config import CurriculumPhase, Precision, stage_preset
from worldloop.model.train.loop import Trainer, build_trainer
from worldloop.model.vae import CausalVideoVAE

TIMESTEPS = [1000.0, 941.2, 841.1, 633.8]
Z = load_preset("tiny").latent_channels  # latent channels of the tiny preset


def _model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    model = build_world_model(load_preset("tiny"))
    for i in range(model.cfg.num_experts):
        torch.nn.init.normal_(model.expert(i).head.head.weight, std=0.02)
    return model


def _inputs(blocks: int = 2, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(1)
    t = 1 + 2 * blocks
    text = torch.randn(1, 5, 384, generator=g)
    return {
        "reference": torch.randn(1, Z, 1, size // 8, size // 8, generator=g),
        "camera": group_plucker(
            torch.randn(1, 1 + 4 * (t - 1), 6, size, size, generator=g), temporal_stride=4
        ),
        "conditioning": Conditioning(text, torch.ones(1, 5, dtype=torch.bool)),
        "still": torch.randn(1, Z, 1, size // 8, size // 8, generator=g),  # tiny: i2v_still
    }


def test_rollout_keeps_the_reference_and_trains_only_through_exit_steps() -> None:
    model = _model()
    inp = _inputs()
    out = self_forcing_rollout(
        model,
        **inp,
        num_blocks=2,
        timesteps=TIMESTEPS,
        generator=torch.Generator().manual_seed(3),
        height=32,
        width=32,
    )
    x = out.video_latents
    assert x.shape == (1, Z, 5, 4, 4) and len(out.exit_steps) == 2
    assert torch.equal(x[:, :, :1], inp["reference"])
    x.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    again = self_forcing_rollout(
        model,
        **inp,
        num_blocks=2,
        timesteps=TIMESTEPS,
        generator=torch.Generator().manual_seed(3),
        height=32,
        width=32,
    )
    assert torch.equal(again.video_latents, x.detach()) and again.exit_steps == out.exit_steps


def test_rollout_trains_the_context_projections_through_the_exit_steps() -> None:
    """Self-Forcing detaches the *past* (cached self-attention K/V of earlier blocks), not the prompt:
    the exit steps' gradient reaches the text embedding, the cross-attention K/V projections and the
    interaction extractor that the context K/V are computed from."""
    model = _model()
    inp = _inputs()
    g = torch.Generator().manual_seed(2)
    text = inp["conditioning"]
    inp["conditioning"] = Conditioning(
        text.text_tokens,
        text.text_mask,
        torch.randn(1, 4, 384, generator=g),
        torch.ones(1, 4, dtype=torch.bool),
    )
    out = self_forcing_rollout(
        model,
        **inp,
        num_blocks=2,
        timesteps=TIMESTEPS,
        generator=torch.Generator().manual_seed(3),
        height=32,
        width=32,
    )
    out.video_latents.square().mean().backward()
    trained = {model.expert_for(TIMESTEPS[s]) for s in out.exit_steps}
    grads = {n: p.grad for n, p in model.named_parameters()}
    context = [
        n
        for n in grads
        if n.startswith(tuple(f"experts.{e}." for e in trained))
        and (".text_embedding." in n or ".cross_attn.k." in n or ".cross_attn.v." in n)
    ]
    context += [n for n in grads if n.startswith("interaction.")]
    assert len(context) > 4
    dead = [n for n in context if grads[n] is None or not grads[n].any()]
    assert not dead, f"no gradient into the context projections {dead[:4]}"


def _dmd(
    teacher: WorldModel, critic: WorldModel, x: torch.Tensor, guidance: float
) -> tuple[torch.Tensor, dict]:
    inp = _inputs()
    cond = i2v_condition(x[:, :, :1].detach(), num_frames=x.shape[2], temporal_stride=4)
    empty = Conditioning(torch.zeros(1, 1, 384), torch.ones(1, 1, dtype=torch.bool))
    return dmd_generator_loss(
        x,
        teacher=teacher,
        critic=critic,
        cond=cond,
        camera=inp["camera"],
        conditioning=inp["conditioning"],
        unconditional=empty,
        guidance=guidance,
        generators=[torch.Generator().manual_seed(5)],
        shift=5.0,
    )


def test_dmd_gradient_vanishes_when_critic_equals_teacher_and_points_from_fake_to_real() -> None:
    teacher = _model(0)
    x = torch.randn(1, Z, 5, 4, 4, requires_grad=True)
    loss, _ = _dmd(teacher, copy.deepcopy(teacher), x, guidance=1.0)
    loss.backward()
    assert float(loss) == 0.0 and not x.grad.any()
    critic = _model(1)
    x = torch.randn(1, Z, 5, 4, 4, requires_grad=True)
    loss, info = _dmd(teacher, critic, x, guidance=3.0)
    loss.backward()
    assert float(loss) > 0 and info["dmd_grad_norm"] > 0
    assert not x.grad[:, :, 0].any()  # the reference frame is never scored
    # d/dx ½·mean((x − sg(x − g))²) = g / N: the step follows −g.
    n = x[:, :, 1:].numel()
    assert torch.allclose(x.grad[:, :, 1:].norm() * n, torch.tensor(info["dmd_grad_norm"]), rtol=1e-4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, SynthConfig(size=64, frames=9), clips=2, seed=7)
    return Mixture.open(str(out))


def _trainer(clips: Mixture, ckpt: Path, steps: int, **update: object) -> Trainer:
    cfg = stage_preset("distill")
    cfg = cfg.model_copy(
        update={
            **update,
            "curriculum": (CurriculumPhase(frames=9, steps=steps),),
            "height": 32,
            "width": 32,
            "checkpoint_every": 2,
            "distill": cfg.distill.model_copy(update={"critic_steps_per_generator": 1}),  # type: ignore[union-attr]
        }
    )
    model = _model()
    vae = CausalVideoVAE(model.cfg.vae)
    return build_trainer(
        cfg, model, vae=vae, text_encoder=HashingEncoder(dim=384), data=clips, checkpoint_dir=ckpt
    )


def test_distillation_trains_student_and_critic_with_per_expert_rates(clips: Mixture, tmp_path: Path) -> None:
    trainer = _trainer(clips, tmp_path, steps=2)
    teacher = {n: p.clone() for n, p in trainer.modules["teacher"].named_parameters()}
    student = {n: p.detach().clone() for n, p in trainer.modules["student"].named_parameters()}
    critic = {n: p.detach().clone() for n, p in trainer.modules["critic"].named_parameters()}
    result = trainer.run()
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    lrs = trainer.lr_table
    assert lrs["student/expert0"] != lrs["student/expert1"] and lrs["critic/expert0"] != lrs["critic/expert1"]
    assert all(torch.equal(p, teacher[n]) for n, p in trainer.modules["teacher"].named_parameters())
    moved = lambda model, before: {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}  # noqa: E731
    assert any(n.startswith("experts.") for n in moved(trainer.modules["student"], student))
    assert not any(n.startswith("camera_encoder.") for n in moved(trainer.modules["student"], student))
    assert any(n.startswith("experts.") for n in moved(trainer.modules["critic"], critic))
    assert (tmp_path / "step-00000002" / "critic.safetensors").exists()


def test_distillation_resumes_to_the_same_student_and_critic(clips: Mixture, tmp_path: Path) -> None:
    straight = _trainer(clips, tmp_path / "a", steps=3)
    full = straight.run()
    _trainer(clips, tmp_path / "b", steps=3).run(max_steps=2)
    resumed = _trainer(clips, tmp_path / "b", steps=3)
    rest = resumed.run()
    assert rest.resumed_from == 2 and rest.losses == full.losses[2:]
    for a, b in (
        (straight.modules["student"], resumed.modules["student"]),
        (straight.modules["critic"], resumed.modules["critic"]),
    ):
        pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
        assert all(torch.equal(pa[n], pb[n]) for n in pa)


def test_bf16_distillation_runs(clips: Mixture, tmp_path: Path) -> None:
    """bf16 (the GPU precision) casts fp32 data-path inputs at the model; the KV cache takes its dtype."""
    trainer = _trainer(clips, tmp_path / "ckpt", steps=1, precision=Precision.bf16)
    result = trainer.run()
    assert (
        trainer.modules["student"].dtype == torch.bfloat16
        and trainer.modules["teacher"].dtype == torch.bfloat16
    )
    assert result.steps == 1 and all(torch.isfinite(torch.tensor(result.losses)))
