"""Stage 3 objective: autoregressive distillation of the bidirectional model into the causal few-step
student (Self-Forcing rollouts + DMD, DESIGN.md §6).

Three copies of the stage-2 model: the **student** (causal, few-step, trained), the **teacher**
(bidirectional, frozen: real score with CFG) and the **critic** (bidirectional, trained: fake score).
One optimiser step first runs ``critic_steps_per_generator`` critic updates on fresh student rollouts
(no gradient into the student), then one generator update through the Self-Forcing rollout, each on
its own global batch. Learning rates are per expert for both the student and the critic.

The rollout calls the student's ``set_context`` / ``forward_step`` / ``commit_block`` rather than its
engine's forward; its exit steps are drawn from the *global* batch's seed, each rank keeping its own
rows of the noise, so every rank runs the same modules (the ZeRO rules: :mod:`..loop`).

Instructions: the student takes each turn at the block it is issued in (recaching there, as serving
does); the teacher and the critic, which see the whole clip at once, take the same turns per latent
frame, each frame with the turn its block had (:meth:`PreparedBatch.score_conditioning`).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from worldloop.model.arch.dit import set_gradient_checkpointing
from worldloop.model.arch.world_model import Conditioning, WorldModel
from worldloop.model.diffusion.schedule import few_step_timesteps
from worldloop.model.distill.dmd import critic_loss, dmd_generator_loss
from worldloop.model.distill.self_forcing import self_forcing_rollout
from worldloop.model.spec import ModelSpec, SamplingSchedule
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.config import ParamGroup, Stage, TrainConfig
from worldloop.model.train.objectives.base import (
    Forward,
    FrozenModule,
    LrGroup,
    Metrics,
    Objective,
    RankBatch,
    TrainedModule,
    Update,
    freeze_except,
)
from worldloop.model.train.objectives.batch import PreparedBatch, prepare_batch
from worldloop.model.vae.autoencoder import CausalVideoVAE


def expert_groups(model: WorldModel, lrs: list[float], *, extra: dict[str, float]) -> tuple[LrGroup, ...]:
    """One group per expert with its LR, plus named extra groups; everything else frozen."""
    params = model.parameter_groups()
    named = [(f"expert{i}", lr) for i, lr in enumerate(lrs)] + list(extra.items())
    return freeze_except(model, [LrGroup(name, params[name], lr) for name, lr in named])


@dataclass(frozen=True)
class StudentSample:
    """Student output the scores judge, as an I2V clip whose frame 0 is the (clean) reference."""

    x: Tensor  # (B, C, T, h, w), with gradient where the student update trains
    cond: Tensor  # (B, stride + C, T, h, w): the I2V condition on frame 0
    camera: Tensor  # (B, T, 6·stride, H, W): rays relative to frame 0
    info: Metrics  # how the sample was made (reported with the generator update)
    real_first: Tensor | None = None  # (B, C, 1, h, w): the real frame the real score conditions on
    real_cond: Tensor | None = None  # its I2V condition (stage 4; stage 3's frame 0 is real already)
    conditioning: Conditioning | None = None  # what the scores judge it by (None: the clip's turns per block)


class DistillObjective(Objective):
    """Stage ``distill`` of ``cfg``, starting from the stage-2 weights already in ``model`` (which
    becomes the student). The teacher (real score) and the critic (fake score) are copies of it unless
    given: a stage after this one passes the frozen stage-2 model its lineage carries, and the critic
    it continues."""

    stage = Stage.distill
    needs_teacher = False  # stage 3: the model it starts from is the teacher

    def __init__(
        self,
        cfg: TrainConfig,
        model: WorldModel,
        *,
        vae: CausalVideoVAE,
        text_encoder: TextEncoder,
        teacher: WorldModel | None = None,
        critic: WorldModel | None = None,
    ) -> None:
        if cfg.stage is not self.stage or cfg.distill is None:
            raise ValueError(f"{type(self).__name__} runs stage {self.stage.value} (see stage_preset)")
        if self.needs_teacher and teacher is None:
            raise ValueError(
                f"stage {self.stage.value}'s real score is the frozen stage-2 model: pass teacher= "
                "(run_stage finds it in the stage-3 checkpoint and its lineage)"
            )
        self.cfg, self.dcfg = cfg, cfg.distill
        self.student, self.vae, self.text_encoder = model, vae.eval(), text_encoder
        if critic is None:  # the fake score starts as the real one (DMD)
            critic = copy.deepcopy(model if teacher is None else teacher).train().requires_grad_(True)
        self.teacher = (teacher or copy.deepcopy(model)).eval().requires_grad_(False)
        self.critic = critic
        for trained in (self.student, self.critic):  # the teacher runs without grad
            set_gradient_checkpointing(trained, cfg.gradient_checkpointing)
        mcfg = model.cfg
        self.timesteps = few_step_timesteps(
            self.dcfg.student_steps,
            shift=cfg.shift,
            boundary=mcfg.boundary,
            steps_per_expert=self.dcfg.steps_per_expert if mcfg.num_experts > 1 else None,
        )
        self._check_curriculum()
        gen_lr, critic_lr = self._lrs()
        extra = {"interaction": cfg.lr} if ParamGroup.interaction in cfg.trainable else {}
        self.trained = (
            TrainedModule("student", model, expert_groups(model, gen_lr, extra=extra), mcfg.dim),
            TrainedModule("critic", self.critic, expert_groups(self.critic, critic_lr, extra={}), mcfg.dim),
        )
        self.frozen = (FrozenModule("teacher", self.teacher, mcfg.dim),)
        critic_updates = [
            Update("critic", "critic_loss", functools.partial(self.critic_update, k=k))
            for k in range(self.dcfg.critic_steps_per_generator)
        ]
        self.updates = (*critic_updates, Update("student", "generator_loss", self.generator_update))
        self.loss_metric = "critic_loss"

    def _check_curriculum(self) -> None:
        mcfg = self.student.cfg
        stride, f = mcfg.vae.temporal_stride, mcfg.causal.block_frames
        for phase in self.cfg.curriculum:
            latent = 1 + (phase.frames - 1) // stride
            if (latent - 1) % f:
                raise ValueError(
                    f"curriculum clip of {phase.frames} frames has {latent} latent frames; the student "
                    f"generates blocks of {f}, so use 1 + {stride * f}·k frames (e.g. {1 + stride * f})"
                )

    def _lrs(self) -> tuple[list[float], list[float]]:
        """Per-expert LRs of the student (``expert_lr`` or ``lr``) and the critic (scaled so its
        fastest expert runs at ``critic_lr``)."""
        n = self.student.cfg.num_experts
        gen = list(self.cfg.expert_lr or (self.cfg.lr,) * n)[:n]
        top = max(gen)
        return gen, [self.dcfg.critic_lr * lr / top for lr in gen]

    def inputs(self, batch: RankBatch) -> PreparedBatch:
        return prepare_batch(
            batch.windows,
            vae=self.vae,
            text_encoder=self.text_encoder,
            with_instruction=True,
            device=batch.device,
            block_frames=self.student.cfg.causal.block_frames,
            i2v=self.student.cfg,
        )

    def rollout(self, inputs: PreparedBatch, batch: RankBatch, *, salt: int) -> Tensor:
        """Self-Forcing rollout of the whole clip, seeded by the global batch: (B, C, T, h, w)."""
        mcfg = self.student.cfg
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + batch.first * 7 + salt)
        blocks = (inputs.latents.shape[2] - 1) // mcfg.causal.block_frames
        return self_forcing_rollout(
            self.student,
            reference=inputs.latents[:, :, :1],
            camera=inputs.camera,
            conditioning=inputs.conditioning_at(1),
            turns=inputs.instruction_turns(last_block=blocks),  # recached where issued, as in serving
            num_blocks=blocks,
            timesteps=self.timesteps,
            generator=g,
            height=self.cfg.height,
            width=self.cfg.width,
            global_batch=batch.global_batch,
            first_row=batch.first_row,
            still=inputs.still,
        ).video_latents

    def student_sample(
        self, inputs: PreparedBatch, batch: RankBatch, *, salt: int, grad: bool
    ) -> StudentSample:
        """What the scores judge: the student's rollout of the whole clip (stage 4: a window of a
        long one). ``salt`` tells the rollouts of one step apart; ``grad`` keeps the graph."""
        with torch.set_grad_enabled(grad):
            x = self.rollout(inputs, batch, salt=salt)
        return StudentSample(x, inputs.cond, inputs.camera, {})

    def critic_update(self, batch: RankBatch, forward: Forward, *, k: int) -> tuple[Tensor, Metrics]:
        """Critic (fake score) flow matching on a fresh student sample (no gradient into the student);
        the noise of sample ``i`` of critic update ``k`` comes from its own seed."""
        inputs = self.inputs(batch)
        sample = self.student_sample(inputs, batch, salt=k, grad=False)
        gens = [torch.Generator().manual_seed(self.cfg.seed * 7_000_003 + i * 13 + k) for i in batch.indices]
        loss = critic_loss(
            self.critic,
            sample.x,
            cond=sample.cond,
            camera=sample.camera,
            conditioning=sample.conditioning or inputs.score_conditioning(),
            generators=gens,
            shift=self.cfg.shift,
            forward=forward,
        )
        return loss, {}

    def generator_update(self, batch: RankBatch, forward: Forward) -> tuple[Tensor, Metrics]:
        """DMD (teacher with CFG vs critic) through a student sample with gradient. ``forward`` is
        unused: the rollout calls the student's cached steps (see the module docstring)."""
        inputs = self.inputs(batch)
        sample = self.student_sample(inputs, batch, salt=997, grad=True)
        empty = self.text_encoder.encode([""] * len(batch.indices))
        uncond = Conditioning(empty.tokens.to(batch.device), empty.mask.to(batch.device))
        gens = [torch.Generator().manual_seed(self.cfg.seed * 9_000_011 + i) for i in batch.indices]
        loss, info = dmd_generator_loss(
            sample.x,
            teacher=self.teacher,
            critic=self.critic,
            cond=sample.cond,
            camera=sample.camera,
            conditioning=sample.conditioning or inputs.score_conditioning(),
            unconditional=uncond,
            guidance=self.dcfg.guidance_scale,
            generators=gens,
            shift=self.cfg.shift,
            real_first=sample.real_first,
            real_cond=sample.real_cond,
        )
        return loss, {**info, **sample.info}

    def state(self) -> dict[str, Any]:
        return {"student_timesteps": self.timesteps}

    def metadata(self) -> dict[str, str]:
        return {"model_config": self.student.cfg.model_dump_json()}

    def checkpoint_spec(self, spec: ModelSpec) -> ModelSpec:
        """Samplers of this checkpoint run the student's own timesteps."""
        return spec.with_schedule(SamplingSchedule(timesteps=tuple(self.timesteps), shift=self.cfg.shift))
