"""Stage 3: autoregressive distillation of the bidirectional model into the causal few-step student
(Self-Forcing rollouts + DMD), on DeepSpeed (DESIGN.md §6).

Three copies of the stage-2 model: the **student** (causal, few-step, trained), the **teacher**
(bidirectional, frozen: real score with CFG) and the **critic** (bidirectional, trained: fake score).
Each generator step first runs ``critic_steps_per_generator`` critic updates on fresh student rollouts
(no gradient into the student), then one generator update through the Self-Forcing rollout. Learning
rates are per expert for both the student and the critic.

ZeRO 0–3. Student and critic each get a DeepSpeed engine; the rollout calls the student's
``set_context`` / ``forward_step`` / ``commit_block`` rather than the engine's forward, which ZeRO
allows because its work happens in per-submodule hooks (ZeRO-3: gather a module's partitioned
parameters before its forward, release them after; the backward re-gathers) and per-parameter gradient
hooks (ZeRO-2/3 reduce-scatter). Three things make that correct:

* every rank calls the same modules in the same order — the rollout's exit steps (and stage 4's
  rollout length, teacher forcing and player actions) are drawn from the *global* batch's seed, each
  rank keeping its own rows of the noise, and the DMD scores run every expert
  (:func:`~worldloop.model.distill.dmd.frozen_scores`). One process with batch W·B then draws what W
  processes with batch B draw;
* ``nn.MultiheadAttention`` (interaction extractor) reads its ``out_proj`` weight directly, outside
  that submodule's forward: under ZeRO-3 it is made a leaf, gathered whole on entry;
* under ZeRO-3 the frozen teacher gets its own optimizer-less ZeRO-3 engine: at a14b every copy of the
  model (two 14B experts, ~54 GB in bf16) must be partitioned to fit beside the student's and
  critic's partitions, and gathering it whole per call (``GatheredParameters``) would need the same
  memory on every rank; its hooks gather one layer at a time instead. Under ZeRO 0–2 it stays a plain
  replicated module, as before.

Checkpoints gather partitioned weights and EMA to rank 0 and keep per-rank optimizer shards
(:mod:`worldloop.model.train.checkpoint`); weights are loaded before the engines are built.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from worldloop.model.arch.dit import set_gradient_checkpointing
from worldloop.model.arch.world_model import Conditioning, WorldModel
from worldloop.model.diffusion.schedule import few_step_timesteps
from worldloop.model.distill.dmd import critic_loss, dmd_generator_loss
from worldloop.model.distill.self_forcing import self_forcing_rollout
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.checkpoint import (
    Weights,
    check_resumable,
    gather_shards,
    gathered_state_dict,
    latest_checkpoint,
    load_training_state,
    load_weights,
    local_shard,
    optimizer_state_access,
    save_checkpoint,
    save_optimizer_shard,
    shard_of,
)
from worldloop.model.train.config import ParamGroup, Stage, TrainConfig
from worldloop.model.train.data import TrainClip, WindowSampler
from worldloop.model.train.objectives import PreparedBatch, prepare_batch
from worldloop.model.train.trainer import (
    MetricsCallback,
    StepReporter,
    TrainResult,
    ensure_distributed,
    warmup_lambda,
    zero_optimization,
)
from worldloop.model.vae.autoencoder import CausalVideoVAE

log = logging.getLogger(__name__)


def expert_groups(
    model: WorldModel, lrs: Sequence[float], *, extra: dict[str, float]
) -> list[dict[str, Any]]:
    """Param groups: one per expert with its LR, plus named extra groups; everything else frozen."""
    groups = model.parameter_groups()
    for p in model.parameters():
        p.requires_grad_(False)
    named = [(f"expert{i}", lr) for i, lr in enumerate(lrs)] + list(extra.items())
    out: list[dict[str, Any]] = []
    for name, lr in named:
        for p in groups[name]:
            p.requires_grad_(True)
        out.append({"params": groups[name], "lr": lr, "name": name})
    return out


@dataclass(frozen=True)
class Snapshot:
    """What a checkpoint holds: modules, or their full state dicts gathered from ZeRO-3 partitions."""

    student: Weights
    critic: Weights
    teacher: Weights
    ema: dict[str, torch.Tensor]  # full tensors (this rank's partitions before gathering)
    shards: Path | None  # staging folder of every rank's optimizer shard, or None


class DistillTrainer:
    """Runs stage ``distill`` of ``cfg``, starting from the stage-2 weights already in ``model``."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: WorldModel,
        *,
        vae: CausalVideoVAE,
        text_encoder: TextEncoder,
        clips: Sequence[TrainClip],
        checkpoint_dir: str | Path,
        on_metrics: MetricsCallback | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_checkpoint: Callable[[Path], None] | None = None,
    ) -> None:
        if cfg.stage is not Stage.distill or cfg.distill is None:
            raise ValueError("DistillTrainer runs stage distill (with a 'distill' section)")
        self.cfg, self.dcfg = cfg, cfg.distill
        self.student, self.vae, self.text_encoder = model, vae.eval(), text_encoder
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.device = model.device  # the engines' device once they exist (run)
        self.critic = copy.deepcopy(model)
        self.clips, self.checkpoint_dir = clips, Path(checkpoint_dir)
        self.on_metrics, self.on_progress = on_metrics, on_progress
        for trained in (self.student, self.critic):  # the teacher runs without grad
            set_gradient_checkpointing(trained, cfg.gradient_checkpointing)
        self.rank, self.world = ensure_distributed()
        # this rank's rows of every global-batch noise draw of the rollout
        self.global_batch, self.first_row = cfg.batch_size * self.world, cfg.batch_size * self.rank
        self.total_steps = sum(p.steps for p in cfg.curriculum)
        self.reporter = StepReporter(
            cfg, self.rank, self.world, self.total_steps, on_metrics, on_progress, on_checkpoint
        )
        mcfg = model.cfg
        self.timesteps = few_step_timesteps(
            self.dcfg.student_steps,
            shift=cfg.shift,
            boundary=mcfg.boundary,
            steps_per_expert=self.dcfg.steps_per_expert if mcfg.num_experts > 1 else None,
        )
        stride, f = mcfg.vae.temporal_stride, mcfg.causal.block_frames
        for phase in cfg.curriculum:
            latent = 1 + (phase.frames - 1) // stride
            if (latent - 1) % f:
                raise ValueError(
                    f"curriculum clip of {phase.frames} frames has {latent} latent frames; the student "
                    f"generates blocks of {f}, so use 1 + {stride * f}·k frames (e.g. {1 + stride * f})"
                )

    def _lrs(self) -> tuple[list[float], list[float]]:
        n = self.student.cfg.num_experts
        gen = list(self.cfg.expert_lr or (self.cfg.lr,) * n)[:n]
        top = max(gen)
        critic = [self.dcfg.critic_lr * lr / top for lr in gen]
        return gen, critic

    def _zero(self, module: WorldModel) -> dict[str, Any]:
        return zero_optimization(self.cfg.zero_stage, module, dim=module.cfg.dim)

    def _engine(self, module: WorldModel, groups: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
        import deepspeed

        opt = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "name"} for g in groups], weight_decay=self.cfg.weight_decay
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(self.cfg.warmup_steps))
        engine, _, _, _ = deepspeed.initialize(
            model=module,
            optimizer=opt,
            lr_scheduler=sched,
            config={
                "train_micro_batch_size_per_gpu": self.cfg.batch_size,
                "gradient_accumulation_steps": 1,
                "gradient_clipping": self.cfg.grad_clip,
                "zero_optimization": self._zero(module),
                "bf16": {"enabled": self.cfg.precision.value == "bf16"},
                "steps_per_print": 1 << 30,
                "zero_allow_untested_optimizer": True,
            },
        )
        return engine, opt, sched

    def _partition_teacher(self) -> None:
        """ZeRO-3: partition the frozen teacher like the trained copies (an engine with no optimizer)."""
        import deepspeed

        deepspeed.initialize(
            model=self.teacher,
            config={
                "train_micro_batch_size_per_gpu": self.cfg.batch_size,
                "zero_optimization": self._zero(self.teacher),
                "bf16": {"enabled": self.cfg.precision.value == "bf16"},  # the dtype of student and critic
                "steps_per_print": 1 << 30,
            },
        )

    def _batch(self, sampler: WindowSampler, first: int) -> tuple[PreparedBatch, Conditioning, list[int]]:
        b = self.cfg.batch_size
        start = first * b * self.world + self.rank * b
        indices = list(range(start, start + b))
        batch = prepare_batch(
            sampler.batch(indices),
            vae=self.vae,
            text_encoder=self.text_encoder,
            with_instruction=True,
            device=self.device,
        )
        empty = self.text_encoder.encode([""] * b)
        return batch, Conditioning(empty.tokens.to(self.device), empty.mask.to(self.device)), indices

    def global_first(self, indices: list[int]) -> int:
        """The first sample index of the global batch that this rank's ``indices`` belong to: the seed of
        every choice all ranks must share (which modules the rollout runs)."""
        return indices[0] - self.rank * self.cfg.batch_size

    def _rollout(self, batch: PreparedBatch, indices: list[int], salt: int) -> torch.Tensor:
        mcfg = self.student.cfg
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.global_first(indices) * 7 + salt)
        blocks = (batch.latents.shape[2] - 1) // mcfg.causal.block_frames
        return self_forcing_rollout(
            self.student,
            reference=batch.latents[:, :, :1],
            camera=batch.camera,
            conditioning=batch.conditioning,
            num_blocks=blocks,
            timesteps=self.timesteps,
            generator=g,
            height=self.cfg.height,
            width=self.cfg.width,
            global_batch=self.global_batch,
            first_row=self.first_row,
        ).video_latents

    # -- the two losses of a step (stage 4 overrides them) ------------------------------------------
    def critic_step_loss(self, batch: PreparedBatch, idx: list[int], k: int, forward: object) -> torch.Tensor:
        """Critic flow matching on a fresh student rollout (no gradient into the student)."""
        with torch.no_grad():
            x = self._rollout(batch, idx, salt=k)
        gens = [torch.Generator().manual_seed(self.cfg.seed * 7_000_003 + i * 13 + k) for i in idx]
        return critic_loss(
            self.critic,
            x,
            cond=batch.cond,
            camera=batch.camera,
            conditioning=batch.conditioning,
            generators=gens,
            shift=self.cfg.shift,
            forward=forward,
        )

    def generator_step_loss(
        self, batch: PreparedBatch, uncond: Conditioning, idx: list[int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """DMD through a Self-Forcing rollout of the whole clip."""
        x = self._rollout(batch, idx, salt=997)
        gens = [torch.Generator().manual_seed(self.cfg.seed * 9_000_011 + i) for i in idx]
        return dmd_generator_loss(
            x,
            teacher=self.teacher,
            critic=self.critic,
            cond=batch.cond,
            camera=batch.camera,
            conditioning=batch.conditioning,
            unconditional=uncond,
            guidance=self.dcfg.guidance_scale,
            generators=gens,
            shift=self.cfg.shift,
        )

    def run(self, *, max_steps: int | None = None) -> TrainResult:
        started = time.perf_counter()
        cfg, d = self.cfg, self.dcfg
        gen_lr, critic_lr = self._lrs()
        extra = {"interaction": cfg.lr} if ParamGroup.interaction in cfg.trainable else {}
        g_groups = expert_groups(self.student, gen_lr, extra=extra)
        c_groups = expert_groups(self.critic, critic_lr, extra={})
        self.lr_table = {f"student/{g['name']}": g["lr"] for g in g_groups}
        self.lr_table.update({f"critic/{g['name']}": g["lr"] for g in c_groups})
        found = latest_checkpoint(self.checkpoint_dir)
        if found is not None:  # before the engines: ZeRO copies (1/2) or partitions (3) these weights
            check_resumable(found, zero_stage=self.cfg.zero_stage, world=self.world)
            modules = {"critic": self.critic, "teacher": self.teacher}
            if not (found / "teacher.safetensors").exists():  # written before the teacher was saved
                log.warning("%s has no teacher: the real score is the model this trainer was given", found)
                del modules["teacher"]
            load_weights(found, model=self.student, extra=modules)
        if cfg.zero_stage == 3:
            self._partition_teacher()
        g_engine, g_opt, g_sched = self._engine(self.student, g_groups)
        c_engine, c_opt, c_sched = self._engine(self.critic, c_groups)
        self.device = g_engine.device
        self.vae.to(self.device)
        if cfg.zero_stage < 3:  # the ZeRO-3 teacher already sits in its own engine
            self.teacher.to(self.device, dtype=self.student.dtype)  # frozen: bf16 like the student
        trained = {n: p for n, p in self.student.named_parameters() if p.requires_grad}
        ema = {n: local_shard(p).detach().clone().float() for n, p in trained.items()}  # this rank's part
        step, resumed, history = 0, None, []
        if found is not None:
            with optimizer_state_access(g_engine, c_engine):
                state = load_training_state(found, optimizer=g_opt, ema=None, extra={"critic": c_opt})
            for n, full in load_file(str(found / "ema.safetensors")).items():
                ema[n].copy_(shard_of(full, trained[n]))
            g_sched.load_state_dict(state["scheduler"])
            c_sched.load_state_dict(state["critic_scheduler"])
            step = resumed = int(state["step"])
            history = list(state.get("loss_history", []))
        result = TrainResult(steps=step, resumed_from=resumed)
        end = self.total_steps if max_steps is None else min(self.total_steps, step + max_steps)
        phase_of = [i for i, p in enumerate(cfg.curriculum) for _ in range(p.steps)]
        samplers: dict[int, WindowSampler] = {}
        per_step = d.critic_steps_per_generator + 1
        while step < end:
            phase = phase_of[step]
            sampler = samplers.setdefault(
                phase,
                WindowSampler(
                    self.clips,
                    frames=cfg.curriculum[phase].frames,
                    height=cfg.height,
                    width=cfg.width,
                    seed=cfg.seed + 7919 * phase,
                    long_caption_prob=cfg.long_caption_prob,
                ),
            )
            # 1. Critic (fake score) updates on fresh student samples.
            self.critic.train()
            critic_losses = []
            for k in range(d.critic_steps_per_generator):
                batch, _, idx = self._batch(sampler, step * per_step + k)
                loss = self.critic_step_loss(batch, idx, k, c_engine)
                c_engine.backward(loss)
                c_engine.step()
                critic_losses.append(float(loss.detach()))
            # 2. Generator (student) update through the Self-Forcing rollout.
            self.student.train()
            batch, uncond, idx = self._batch(sampler, step * per_step + d.critic_steps_per_generator)
            g_loss, info = self.generator_step_loss(batch, uncond, idx)
            g_engine.backward(g_loss)
            g_engine.step()
            step += 1
            with torch.no_grad():
                for n, p in self.student.named_parameters():
                    if n in ema:
                        ema[n].mul_(0.999).add_(local_shard(p).detach().float(), alpha=0.001)
            values = torch.tensor([float(g_loss.detach()), sum(critic_losses) / len(critic_losses)])
            if self.world > 1:
                dist.all_reduce(values)
                values /= self.world
            gen_value, critic_value = (float(v) for v in values)
            history.append(critic_value)
            result.losses.append(critic_value)
            metrics = {"loss": critic_value, "critic_loss": critic_value, "generator_loss": gen_value, **info}
            metrics.update({f"lr/{k}": v for k, v in self.lr_table.items()})
            # StepReporter saves on rank 0 only; what it needs from the other ranks is collected here, on
            # every rank, at the steps it saves (the same rule as StepReporter.after_step).
            due = step % cfg.checkpoint_every == 0 or step == end
            with optimizer_state_access(g_engine, c_engine):  # the shards and rank 0's save read it
                snap = self._snapshot(step, ema, trained, g_opt, c_opt, collect=due)
                saved = self.reporter.after_step(
                    step,
                    end,
                    metrics,
                    functools.partial(
                        save_checkpoint,
                        self.checkpoint_dir,
                        step,
                        model=snap.student,
                        optimizer=g_opt,
                        ema=snap.ema,
                        extra={"critic": (snap.critic, c_opt)},
                        frozen={"teacher": snap.teacher},
                        shards=snap.shards,
                        state={
                            "scheduler": g_sched.state_dict(),
                            "critic_scheduler": c_sched.state_dict(),
                            "config": self.cfg.model_dump(mode="json"),
                            "loss_history": history,
                            "world_size": self.world,
                            "student_timesteps": self.timesteps,
                        },
                        metadata={"model_config": self.student.cfg.model_dump_json()},
                    ),
                )
            result.checkpoint = saved or result.checkpoint
        result.steps = step
        result.seconds = time.perf_counter() - started
        return result

    def _snapshot(
        self,
        step: int,
        ema: dict[str, torch.Tensor],
        trained: dict[str, torch.nn.Parameter],
        g_opt: torch.optim.Optimizer,
        c_opt: torch.optim.Optimizer,
        *,
        collect: bool,
    ) -> Snapshot:
        """What rank 0 writes at ``step``. With ``collect`` (a checkpoint step), collected on every rank:
        full weights of student, critic and teacher and the EMA (gathered from ZeRO-3 partitions) and,
        with a partitioned optimizer (ZeRO ≥ 1, several ranks), every rank's optimizer shard in a staging
        folder. Otherwise the modules themselves (nothing is saved).

        The frozen teacher is saved too: a resumed run must score against the same stage-2 model, and
        the caller that built this trainer cannot be relied on to rebuild it (``worldloop train`` loads
        ``--init`` only into a fresh output folder)."""
        if not collect:
            return Snapshot(self.student, self.critic, self.teacher, ema, None)
        student: Weights = self.student
        critic: Weights = self.critic
        teacher: Weights = self.teacher
        if self.cfg.zero_stage == 3:
            student, critic = gathered_state_dict(self.student), gathered_state_dict(self.critic)
            teacher = gathered_state_dict(self.teacher)
            ema = gather_shards(ema, trained)
        shards = None
        if self.cfg.zero_stage >= 1 and self.world > 1:
            shards = self.checkpoint_dir / f".step-{step:08d}.shards"
            save_optimizer_shard(shards, "optimizer", g_opt)
            save_optimizer_shard(shards, "critic_optimizer", c_opt)
            dist.barrier()  # every shard is on disk before rank 0 moves them into the checkpoint
        return Snapshot(student, critic, teacher, ema, shards)
