"""The flow-matching trainer (stages 1 and 2) on DeepSpeed: ZeRO stage from config, fp32 on CPU with
gloo, gradient accumulation, clipping, per-group learning rates, warm-up, EMA, atomic resumable
checkpoints (DESIGN.md §6).

World size 1 runs in-process (the rendezvous variables are set here if missing); N processes come
from ``torchrun``. Rank ``r`` of ``W`` takes samples ``r·B .. r·B + B - 1`` of each global batch of
``W·B``, and every sample draws its noise from its own seeded generator, so one process with batch
``W·B`` and ``W`` processes with batch ``B`` compute the same losses and, up to float summation
order, the same updates.

ZeRO 0–3. Every expert runs in every training forward (see ``WorldModel.forward``), so all ranks call
the same modules — what ZeRO-2's gradient buckets and ZeRO-3's per-module parameter gathers need. Under
ZeRO-3 ``nn.MultiheadAttention`` is a leaf module (it reads ``out_proj.weight`` without calling
``out_proj``), the EMA is kept per partition and gathered for checkpoints, and weights are loaded
before ``deepspeed.initialize`` so ZeRO-1/2 take their fp32 master copy and ZeRO-3 its partitions from
the resumed values (:mod:`worldloop.model.train.checkpoint`).

No tracking service is imported here: metrics go to ``on_metrics`` (the platform plugs MLflow in).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from worldloop.model.arch.dit import set_gradient_checkpointing
from worldloop.model.arch.world_model import WorldModel
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
from worldloop.model.train.objectives import flow_matching_loss, prepare_batch
from worldloop.model.vae.autoencoder import CausalVideoVAE

log = logging.getLogger(__name__)
MetricsCallback = Callable[[int, dict[str, float]], None]


def ensure_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise torch.distributed (gloo on CPU, nccl on GPU); world size 1 needs no launcher.

    Under ``torchrun`` the rendezvous comes from its environment. A lone process rendezvous through a
    file in a private temporary folder instead of a TCP port, so concurrent runs cannot collide.
    """
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if "WORLD_SIZE" not in os.environ:
            store = Path(tempfile.mkdtemp(prefix="worldloop-dist-")) / "rendezvous"
            dist.init_process_group(backend, init_method=store.as_uri(), rank=0, world_size=1)
            os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed reads it; WORLD_SIZE stays unset
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size()


def select_trainable(model: WorldModel, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Freeze everything but ``cfg.trainable``; return optimizer param groups with their LRs."""
    groups = model.parameter_groups()
    for p in model.parameters():
        p.requires_grad_(False)
    out: list[dict[str, Any]] = []
    if ParamGroup.experts in cfg.trainable:
        for i in range(model.cfg.num_experts):
            lr = cfg.expert_lr[i] if cfg.expert_lr is not None else cfg.lr
            out.append({"params": groups[f"expert{i}"], "lr": lr, "name": f"expert{i}"})
    for group in (ParamGroup.camera, ParamGroup.interaction):
        if group in cfg.trainable:
            out.append({"params": groups[group.value], "lr": cfg.lr, "name": group.value})
    for g in out:
        for p in g["params"]:
            p.requires_grad_(True)
    return out


def zero_optimization(stage: int, module: nn.Module, *, dim: int) -> dict[str, Any]:
    """DeepSpeed's ``zero_optimization`` section for ``stage``; under ZeRO-3 also marks ``module``'s
    leaf modules (call it before ``deepspeed.initialize``). ``dim``: the model width."""
    if stage < 3:
        return {"stage": stage}
    from deepspeed.utils import set_z3_leaf_modules

    # MultiheadAttention multiplies by out_proj.weight without calling out_proj. Inside the engine's
    # forward ZeRO-3 fetches such a parameter on access (one more blocking gather), outside it (rollouts,
    # samples) nothing does: as a leaf the whole module is gathered on entry.
    set_z3_leaf_modules(module, [nn.MultiheadAttention], raise_if_not_found=False)
    # Parameters below the threshold stay whole on every rank (biases, norms, modulation vectors):
    # one collective each would cost more than it saves. 10·dim is the usual choice (HF "auto").
    return {"stage": 3, "stage3_param_persistence_threshold": 10 * dim}


def warmup_lambda(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


@dataclass(frozen=True)
class StepReporter:
    """What every trainer does after an optimiser step: report on rank 0, checkpoint on schedule."""

    cfg: TrainConfig
    rank: int
    world: int
    total_steps: int
    on_metrics: MetricsCallback | None
    on_progress: Callable[[int, int], None] | None
    on_checkpoint: Callable[[Path], None] | None = None

    def after_step(
        self, step: int, end: int, metrics: dict[str, float], save: Callable[[], Path]
    ) -> Path | None:
        """Log every ``log_every`` steps and at ``end``; ``save()`` on rank 0 every ``checkpoint_every``."""
        if self.rank == 0:
            if self.on_metrics and (step % self.cfg.log_every == 0 or step == end):
                self.on_metrics(step, metrics)
            if self.on_progress:
                self.on_progress(step, self.total_steps)
        saved = None
        if step % self.cfg.checkpoint_every == 0 or step == end:
            if self.rank == 0:
                saved = save()
                if self.on_checkpoint:
                    self.on_checkpoint(saved)
            if self.world > 1:
                dist.barrier()
        return saved


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # one per optimiser step run in this call
    resumed_from: int | None = None
    checkpoint: Path | None = None
    seconds: float = 0.0


class FlowMatchingTrainer:
    """Runs stage ``action`` or ``instruction`` of ``cfg`` on ``clips`` until the curriculum ends."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: WorldModel,
        *,
        vae: CausalVideoVAE,
        text_encoder: TextEncoder,
        clips: Sequence[TrainClip],
        checkpoint_dir: str | Path,
        ema_decay: float = 0.999,
        on_metrics: MetricsCallback | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_checkpoint: Callable[[Path], None] | None = None,
    ) -> None:
        if cfg.stage not in (Stage.action, Stage.instruction):
            raise ValueError(f"FlowMatchingTrainer runs stages action and instruction, not {cfg.stage.value}")
        self.cfg, self.model, self.vae, self.text_encoder = cfg, model, vae.eval(), text_encoder
        self.clips = clips
        self.checkpoint_dir = Path(checkpoint_dir)
        self.ema_decay = ema_decay
        self.on_metrics, self.on_progress = on_metrics, on_progress
        set_gradient_checkpointing(model, cfg.gradient_checkpointing)
        self.rank, self.world = ensure_distributed()
        self.total_steps = sum(p.steps for p in cfg.curriculum)
        self.reporter = StepReporter(
            cfg, self.rank, self.world, self.total_steps, on_metrics, on_progress, on_checkpoint
        )

    def _engine(self, groups: list[dict[str, Any]]) -> tuple[Any, torch.optim.Optimizer, Any]:
        import deepspeed

        optimizer = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "name"} for g in groups], weight_decay=self.cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(self.cfg.warmup_steps))
        ds_config = {
            "train_micro_batch_size_per_gpu": self.cfg.batch_size,
            "gradient_accumulation_steps": self.cfg.grad_accum,
            "gradient_clipping": self.cfg.grad_clip,
            "zero_optimization": zero_optimization(self.cfg.zero_stage, self.model, dim=self.model.cfg.dim),
            "bf16": {"enabled": self.cfg.precision.value == "bf16"},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
            "zero_allow_untested_optimizer": True,
        }
        engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self._names = [g["name"] for g in groups]
        return engine, optimizer, scheduler

    def _phase(self, step: int) -> int:
        total = 0
        for i, phase in enumerate(self.cfg.curriculum):
            total += phase.steps
            if step < total:
                return i
        return len(self.cfg.curriculum) - 1

    def run(self, *, max_steps: int | None = None) -> TrainResult:
        """Train to the end of the curriculum (or ``max_steps`` more steps), resuming if possible."""
        started = time.perf_counter()
        cfg = self.cfg
        groups = select_trainable(self.model, cfg)
        found = latest_checkpoint(self.checkpoint_dir)
        if found is not None:  # before the engine: ZeRO copies (1/2) or partitions (3) these weights
            check_resumable(found, zero_stage=cfg.zero_stage, world=self.world)
            load_weights(found, model=self.model)
        engine, optimizer, scheduler = self._engine(groups)
        self.vae.to(engine.device)  # the frozen VAE encodes each batch where the model trains
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        ema = {n: local_shard(p).detach().clone().float() for n, p in trainable.items()}  # this rank's part
        step, resumed = 0, None
        history: list[float] = []
        if found is not None:
            with optimizer_state_access(engine):
                state = load_training_state(found, optimizer=optimizer, ema=None)
            for n, full in load_file(str(found / "ema.safetensors")).items():
                ema[n].copy_(shard_of(full, trainable[n]))
            scheduler.load_state_dict(state["scheduler"])
            step = resumed = int(state["step"])
            history = list(state.get("loss_history", []))
            log.info("resumed from %s (step %d)", found, step)
        samplers: dict[int, WindowSampler] = {}
        result = TrainResult(steps=step, resumed_from=resumed)
        end = self.total_steps if max_steps is None else min(self.total_steps, step + max_steps)
        per_rank, micro, decay = cfg.batch_size, cfg.grad_accum, self.ema_decay
        global_batch = per_rank * self.world
        with_instruction = cfg.stage is Stage.instruction
        self.model.train()
        while step < end:
            phase = self._phase(step)
            if phase not in samplers:
                samplers[phase] = WindowSampler(
                    self.clips,
                    frames=cfg.curriculum[phase].frames,
                    height=cfg.height,
                    width=cfg.width,
                    seed=cfg.seed + 7919 * phase,
                    long_caption_prob=cfg.long_caption_prob,
                )
            losses = []
            for m in range(micro):
                first = (step * micro + m) * global_batch + self.rank * per_rank
                indices = list(range(first, first + per_rank))
                batch = prepare_batch(
                    samplers[phase].batch(indices),
                    vae=self.vae,
                    text_encoder=self.text_encoder,
                    with_instruction=with_instruction,
                    device=engine.device,
                )
                gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + i) for i in indices]
                loss = flow_matching_loss(
                    engine.module,
                    batch,
                    shift=cfg.shift,
                    per_frame=cfg.per_frame_sigma,
                    generators=gens,
                    forward=engine,
                )
                engine.backward(loss)
                engine.step()
                losses.append(float(loss.detach()))
            step += 1
            with torch.no_grad():
                for n, p in trainable.items():  # this rank's partition under ZeRO-3, else the tensor
                    ema[n].mul_(decay).add_(local_shard(p).detach().float(), alpha=1 - decay)
            mean = torch.tensor(sum(losses) / len(losses))
            if self.world > 1:
                dist.all_reduce(mean)
                mean /= self.world
            result.losses.append(float(mean))
            history.append(float(mean))
            metrics = {"loss": float(mean), "clip_frames": float(cfg.curriculum[phase].frames)}
            metrics.update(
                {f"lr/{n}": g["lr"] for n, g in zip(self._names, optimizer.param_groups, strict=True)}
            )
            # StepReporter saves on rank 0 only; what it needs from the other ranks is collected here, on
            # every rank, at the steps it saves (the same rule as StepReporter.after_step).
            due = step % cfg.checkpoint_every == 0 or step == end
            with optimizer_state_access(engine):  # the shards and rank 0's save read it
                weights, full_ema, shards = self._snapshot(step, ema, trainable, optimizer, collect=due)
                saved = self.reporter.after_step(
                    step,
                    end,
                    metrics,
                    functools.partial(
                        save_checkpoint,
                        self.checkpoint_dir,
                        step,
                        model=weights,
                        optimizer=optimizer,
                        ema=full_ema,
                        shards=shards,
                        state={
                            "scheduler": scheduler.state_dict(),
                            "config": cfg.model_dump(mode="json"),
                            "loss_history": history,
                            "world_size": self.world,
                        },
                        metadata={"model_config": self.model.cfg.model_dump_json()},
                    ),
                )
            result.checkpoint = saved or result.checkpoint
        result.steps = step
        result.seconds = time.perf_counter() - started
        self.ema = ema  # this rank's partitions under ZeRO-3
        return result

    def _snapshot(
        self,
        step: int,
        ema: dict[str, torch.Tensor],
        trainable: dict[str, nn.Parameter],
        optimizer: torch.optim.Optimizer,
        *,
        collect: bool,
    ) -> tuple[Weights, dict[str, torch.Tensor], Path | None]:
        """The weights, EMA and optimizer-shard staging folder rank 0 writes at ``step``.

        With ``collect`` (a checkpoint step), collected on every rank: full weights and EMA gathered
        from ZeRO-3 partitions and, with a partitioned optimizer (ZeRO ≥ 1, several ranks), every
        rank's optimizer shard in a staging folder. Otherwise the module and EMA themselves."""
        if not collect:
            return self.model, ema, None
        weights: Weights = self.model
        if self.cfg.zero_stage == 3:
            weights, ema = gathered_state_dict(self.model), gather_shards(ema, trainable)
        shards = None
        if self.cfg.zero_stage >= 1 and self.world > 1:
            shards = self.checkpoint_dir / f".step-{step:08d}.shards"
            save_optimizer_shard(shards, "optimizer", optimizer)
            dist.barrier()  # every shard is on disk before rank 0 moves them into the checkpoint
        return weights, ema, shards
