"""Stage 4 as published: rollouts along long real clips to random lengths, windows sampled uniformly along
them, self- and teacher-forcing alternating inside one rollout, the real score conditioned on the real
frame and the critic on the student's, against a frozen teacher that is not the student."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.data import Mixture
from worldloop.model import build_world_model, load_preset
from worldloop.model.distill.dmd import dmd_generator_loss
from worldloop.model.text import HashingEncoder
from worldloop.model.train.config import CurriculumPhase, LongExtensionConfig, stage_preset
from worldloop.model.train.loop import build_trainer
from worldloop.model.train.objectives.long_extension import plan_rollout
from worldloop.model.vae import CausalVideoVAE

TINY = stage_preset("long").long
assert TINY is not None


def test_window_starts_cover_the_rollout_uniformly() -> None:
    rng = np.random.default_rng(0)
    plans = [plan_rollout(rng, real_blocks=20, cfg=TINY) for _ in range(3000)]
    starts = np.array([p.start for p in plans])
    ends = np.array([p.end for p in plans])
    first_start = TINY.min_rollout_blocks - TINY.window_blocks + 1
    assert set(starts) == set(range(first_start, 20 - TINY.window_blocks + 2))  # every start along 20 blocks
    assert ends.min() == TINY.min_rollout_blocks and ends.max() == 20  # lengths vary over the clip
    assert TINY.min_rollout_blocks > 2  # past the 2 blocks of any stage-3 clip (17 frames)
    counts = np.bincount(starts)[first_start:]
    assert counts.min() > 0.7 * counts.mean()  # uniform, not piled at the end as before
    assert all(p.end - p.start + 1 == TINY.window_blocks for p in plans)
    assert all(not any(p.forced[p.start - 1 :]) for p in plans)  # the window itself is generated
    short = [plan_rollout(rng, real_blocks=5, cfg=TINY).end for _ in range(200)]
    assert max(short) == 5  # capped by the clip's real blocks
    with pytest.raises(ValueError, match="shorter than the shortest rollout"):
        plan_rollout(rng, real_blocks=2, cfg=TINY)


def test_teacher_forcing_switches_inside_one_rollout() -> None:
    rng = np.random.default_rng(1)
    plans = [plan_rollout(rng, real_blocks=20, cfg=TINY) for _ in range(500)]
    long = [p for p in plans if p.start > 10]
    switching = [p for p in long if p.switches > 0]
    assert len(switching) > 0.5 * len(long)
    p = switching[0]
    before = p.forced[: p.start - 1]
    assert True in before and False in before  # real and generated blocks in one rollout
    share = np.mean([f for q in plans for f in q.forced[: q.start - 1]])
    assert abs(share - TINY.teacher_forcing_prob) < 0.05
    never = TINY.model_copy(update={"teacher_forcing_prob": 0.0})
    assert not any(any(plan_rollout(rng, real_blocks=20, cfg=never).forced) for _ in range(50))


def test_stage4_scores_the_window_against_the_real_frame_with_a_frozen_teacher(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", SynthConfig(size=64, frames=41), clips=2, seed=9)  # 5 real blocks
    clips = Mixture.open(str(tmp_path / "data"))
    cfg = stage_preset("long")
    cfg = cfg.model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=41, steps=4),),
            "height": 32,
            "width": 32,
            "log_every": 1,
            "distill": cfg.distill.model_copy(update={"critic_steps_per_generator": 1}),  # type: ignore[union-attr]
        }
    )
    torch.manual_seed(0)
    student = build_world_model(load_preset("tiny"))
    teacher = copy.deepcopy(student)
    for i in range(teacher.cfg.num_experts):  # a teacher the student is not a copy of
        torch.nn.init.normal_(teacher.expert(i).head.head.weight, std=0.02)
    seen: list[dict[str, float]] = []
    scored: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = dmd_generator_loss

    def spy(x: torch.Tensor, **kw: object) -> object:
        real_first = kw["real_first"]
        assert isinstance(real_first, torch.Tensor)
        scored.append((x[:, :, :1].detach().clone(), real_first.clone()))
        return original(x, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("worldloop.model.train.objectives.distill.dmd_generator_loss", spy)
        trainer = build_trainer(
            cfg,
            student,
            vae=CausalVideoVAE(student.cfg.vae),
            text_encoder=HashingEncoder(dim=384),
            data=clips,
            checkpoint_dir=tmp_path / "ckpt",
            on_metrics=lambda step, m: seen.append(m),
            teacher=teacher,
        )
        frozen = {n: p.clone() for n, p in teacher.named_parameters()}
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        result = trainer.run()
    assert result.steps == 4 and len(seen) == 4 and len(scored) == 4
    assert trainer.modules["teacher"] is teacher
    assert all(torch.equal(p, frozen[n]) for n, p in teacher.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in student.named_parameters())
    assert all(3 <= m["rollout_blocks"] <= 5 and m["window_frames"] == 1 + 2 * 2 for m in seen)
    assert all(m["window_start"] == m["rollout_blocks"] - 1 for m in seen)
    # the critic's image is the student's previous frame, the real score's the clip's: they differ
    # wherever that frame was generated (always, unless the block before the window was teacher-forced)
    generated_before = [not torch.equal(student_first, real) for student_first, real in scored]
    assert any(generated_before)
    assert (tmp_path / "ckpt" / "step-00000004" / "teacher.safetensors").exists()


def test_stage4_needs_a_teacher_and_long_enough_clips(tmp_path: Path) -> None:
    cfg = stage_preset("long")
    model = build_world_model(load_preset("tiny"))
    kw = {"vae": CausalVideoVAE(model.cfg.vae), "text_encoder": HashingEncoder(dim=384)}
    write_dataset(tmp_path / "data", SynthConfig(size=64, frames=17), clips=1, seed=1)
    clips = Mixture.open(str(tmp_path / "data"))
    with pytest.raises(ValueError, match="frozen stage-2 model"):
        build_trainer(cfg, model, data=clips, checkpoint_dir=tmp_path / "a", **kw)  # type: ignore[arg-type]
    short = cfg.model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=9, steps=1),),
            "long": LongExtensionConfig(min_rollout_blocks=2, max_rollout_blocks=4, window_blocks=1),
        }
    )
    with pytest.raises(ValueError, match="shorter than the shortest rollout"):
        build_trainer(short, model, data=clips, checkpoint_dir=tmp_path / "b", teacher=model, **kw)  # type: ignore[arg-type]


def test_each_score_reads_the_views_of_its_own_frame_0() -> None:
    """The scores' I2V channels for a window from latent frame ``prev``: at the start the batch's own;
    later, frame ``prev`` held still, or with per-frame views (``i2v_warp_pixels``) the views of the
    window's frame 0 through its cameras — the real frame's pixels where given, else that latent decoded —
    as a clip cut there has them (how stage 2 trained the teacher), not the stream image's views."""
    from worldloop.model.arch.camera_encoder import group_plucker
    from worldloop.model.arch.warp import warped_stills
    from worldloop.model.camera.plucker import plucker_embedding
    from worldloop.model.train.objectives.batch import PreparedBatch
    from worldloop.model.train.objectives.long_extension import window_still

    cfg = load_preset("tiny")
    assert cfg.i2v_warp_pixels and cfg.i2v_warp is not None
    torch.manual_seed(0)
    vae = CausalVideoVAE(cfg.vae).eval()
    g = torch.Generator().manual_seed(0)
    first = torch.randn(1, 16, 1, 8, 8, generator=g)

    def batch(still: torch.Tensor | None) -> PreparedBatch:
        return PreparedBatch(
            torch.zeros(1, 16, 9, 8, 8), torch.zeros(1, 20, 9, 8, 8), None, None, still=still
        )  # type: ignore[arg-type]

    held = torch.randn(1, 16, 1, 8, 8, generator=g)
    views = torch.randn(1, 16, 9, 8, 8, generator=g)
    # a window of 5 latent frames (17 video frames) turning to the left, re-based to its frame 0
    c2w = torch.eye(4).repeat(17, 1, 1)
    for k in range(17):
        angle = torch.tensor(0.02 * k)
        c2w[k, 0, 0], c2w[k, 0, 2] = torch.cos(angle), torch.sin(angle)
        c2w[k, 2, 0], c2w[k, 2, 2] = -torch.sin(angle), torch.cos(angle)
    K = torch.tensor([[32.0, 0, 32], [0, 32.0, 32], [0, 0, 1]]).repeat(17, 1, 1)
    camera = group_plucker(plucker_embedding(K, c2w, 64, 64)[None], temporal_stride=4)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1

    def call(still: torch.Tensor | None, prev: int, **kw: torch.Tensor) -> torch.Tensor | None:
        return window_still(vae, cfg, batch(still), first, prev, camera=camera, **kw)

    assert call(None, 4) is None
    assert call(held, 0) is held and call(views, 0) is views
    assert call(held, 4) is first
    own = call(views, 4, image=image)
    assert own is not None and own.shape == (1, 16, 5, 8, 8)
    assert torch.equal(own, warped_stills(vae, image, camera, depth=cfg.i2v_warp))
    assert not torch.allclose(own, views[:, :, 4:])  # not the stream image's views
    decoded = vae.decode(first).clamp(-1, 1)[:, :, 0]
    assert torch.equal(call(views, 4), warped_stills(vae, decoded, camera, depth=cfg.i2v_warp))  # type: ignore[arg-type]
