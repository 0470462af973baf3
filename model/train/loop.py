"""The training loop of every stage (DESIGN.md §6) on DeepSpeed: an :class:`Objective` says what to
train and which losses make one optimiser step; :class:`Trainer` does the rest — engines, resume, EMA,
curriculum, metric reduction, atomic checkpoints that carry the VAE and the model spec.

Data parallelism. World size 1 runs in-process (:func:`~.engine.ensure_distributed` sets up a lone
process group); N processes come from ``torchrun``. Update ``u`` of optimiser step ``s`` draws global
batch ``s·U + u`` (``U`` updates per step) of ``W·B`` samples, and rank ``r`` of ``W`` takes samples
``r·B .. r·B + B - 1`` of it. Every sample draws its noise from its own seeded generator, and every
choice that decides which modules run from the global batch's seed, so one process with batch ``W·B``
and ``W`` processes with batch ``B`` compute the same losses and, up to float summation order, the
same updates. Reported losses are means over the step's updates and over the ranks.

ZeRO 0–3 (stage, bf16 and gradient clipping from the config). Each trained module gets its own
DeepSpeed engine, optimizer (AdamW, named parameter groups with their own LRs) and warm-up scheduler.
ZeRO does its work in per-submodule hooks (ZeRO-3: gather a module's partitioned parameters before
its forward, release them after; the backward re-gathers) and per-parameter gradient hooks (ZeRO-2/3
reduce-scatter), all collectives. Hence the rules:

* **Every rank calls the same modules in the same order.** Every expert runs in every training
  forward (``WorldModel.forward``, the DMD scores); rollouts draw their exit steps, lengths and
  actions from the global batch's seed, each rank keeping its own rows of the noise. Calling a
  module's cached-step methods (``forward_step``) instead of the engine is fine: the hooks sit on the
  submodules. Where an objective calls the engine's forward it must call the engine, not its
  ``module`` (ZeRO-2 resets its gradient bookkeeping there): updates receive it as ``forward``.
* **Leaf modules.** ``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling ``out_proj``:
  under ZeRO-3 it is a leaf, gathered whole on entry (:func:`~.engine.zero_optimization`).
* **Frozen modules** (the stage-3 teacher) get, under ZeRO-3, an optimizer-less ZeRO-3 engine of their
  own: at a14b every copy of the model (two 14B experts, ~54 GB in bf16) must be partitioned to fit
  beside the trained ones, and gathering it whole per call would need that memory on every rank; its
  hooks gather one layer at a time instead. Under ZeRO 0–2 it is a plain replicated module in the
  trained modules' dtype.
* **Weights are loaded before** ``deepspeed.initialize`` on resume: ZeRO-1/2 take their fp32 master
  copy and ZeRO-3 its partitions from the module, so loading afterwards would be ignored (1/2) or
  impossible (3). Optimizer, scheduler, EMA and RNG state follow once the engines exist.
* **Checkpoints are collectives.** At a checkpoint step every rank gathers ZeRO-3 weights and EMA
  partitions (the EMA is kept per partition) and writes its own optimizer shard (ZeRO ≥ 1, several
  ranks); then rank 0 alone writes the folder (:mod:`.checkpoint`) and the others wait at a barrier.
  Ranks on nodes that share no folder with rank 0 hand their shard to ``on_shard`` (the platform
  uploads it beside the checkpoint before rank 0 publishes it); without that hook a shard missing from
  rank 0's staging folder is an error, not a checkpoint that cannot be resumed.

No tracking service is imported here: metrics go to ``on_metrics`` (the platform plugs MLflow in).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor, nn

from worldloop.data import (
    LINEAGE_FILE,
    Lineage,
    Mixture,
    SourceLineage,
    StageLineage,
    merge_sources,
    read_lineage,
)
from worldloop.model.arch.world_model import WorldModel
from worldloop.model.spec import ModelSpec
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.checkpoint import (
    Weights,
    check_resumable,
    checkpoint_name,
    gathered_state_dict,
    latest_checkpoint,
    load_training_state,
    load_weights,
    missing_shards,
    optimizer_state_access,
    save_checkpoint,
    save_optimizer_shard,
)
from worldloop.model.train.config import Stage, TrainConfig
from worldloop.model.train.ema import PartitionedEMA
from worldloop.model.train.engine import Engine, build_engine, ensure_distributed, partition_frozen
from worldloop.model.train.objectives.base import Metrics, Objective, RankBatch, TrainedModule
from worldloop.model.train.objectives.distill import DistillObjective
from worldloop.model.train.objectives.flow_matching import FlowMatchingObjective
from worldloop.model.train.objectives.long_extension import LongExtensionObjective
from worldloop.model.train.objectives.vae import VAEObjective
from worldloop.model.train.windows import WindowSampler
from worldloop.model.vae.autoencoder import CausalVideoVAE

log = logging.getLogger(__name__)
MetricsCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What one :meth:`Trainer.run` did: the step it ended at, its losses, where it resumed from, the
    last checkpoint it wrote (rank 0) and its wall-clock seconds."""

    steps: int
    losses: list[float] = field(default_factory=list)  # one per optimiser step run in this call
    resumed_from: int | None = None
    checkpoint: Path | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """What a checkpoint holds: modules, or their full state dicts gathered from ZeRO-3 partitions."""

    trained: dict[str, Weights]
    frozen: dict[str, Weights]
    ema: dict[str, Tensor]  # full tensors ({} on ranks > 0 under ZeRO-3)
    shards: Path | None  # staging folder of every rank's optimizer shards, or None


class Trainer:
    """Runs ``objective`` over the curriculum of ``cfg`` on the clips of ``data``, checkpointing into
    ``checkpoint_dir`` (and resuming from it). ``vae`` is saved with every checkpoint
    (``vae.safetensors``), ``spec`` (as the objective amends it) as ``spec.json``, and the data lineage
    — ``lineage`` (the earlier stages', from the ``--init`` checkpoint) plus this stage's sources and the
    shards its ranks read — as ``lineage.json``."""

    def __init__(
        self,
        cfg: TrainConfig,
        objective: Objective,
        *,
        vae: nn.Module,
        data: Mixture,
        checkpoint_dir: str | Path,
        spec: ModelSpec | None = None,
        lineage: Lineage | None = None,
        ema_decay: float = 0.999,
        on_metrics: MetricsCallback | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_checkpoint: Callable[[Path], None] | None = None,
        on_shard: Callable[[int, list[Path]], None] | None = None,
    ) -> None:
        objective.check()
        self.cfg, self.objective, self.vae, self.data, self.spec = cfg, objective, vae, data, spec
        self.lineage = lineage or Lineage()
        self._read_before: list[SourceLineage] = []  # this stage's reads before a resume
        self.checkpoint_dir = Path(checkpoint_dir)
        self.ema_decay = ema_decay
        self.on_metrics, self.on_progress, self.on_checkpoint = on_metrics, on_progress, on_checkpoint
        self.on_shard = on_shard
        self.primary, *self.others = objective.trained
        self.rank, self.world = ensure_distributed()
        self.total_steps = cfg.total_steps
        self._frozen_engines: list[Any] = []  # ZeRO-3 engines of frozen modules, kept alive

    @property
    def modules(self) -> dict[str, nn.Module]:
        """The objective's trained and frozen modules by name (``student``, ``critic``, ``teacher``)."""
        modules = {t.name: t.module for t in self.objective.trained}
        return modules | {f.name: f.module for f in self.objective.frozen}

    @property
    def lr_table(self) -> dict[str, float]:
        """Configured learning rate per ``module/group`` (the scheduler's warm-up not applied)."""
        return {f"{t.name}/{g.name}": g.lr for t in self.objective.trained for g in t.groups}

    def run(self, *, max_steps: int | None = None) -> TrainResult:
        """Train to the end of the curriculum (or ``max_steps`` more steps), resuming if possible."""
        started = time.perf_counter()
        history: list[float]
        found = latest_checkpoint(self.checkpoint_dir)
        if found is not None:  # before the engines: ZeRO copies (1/2) or partitions (3) these weights
            check_resumable(found, zero_stage=self.cfg.zero_stage, world=self.world)
            self._load_weights(found)
        engines = self._engines()
        device = engines[self.primary.name].engine.device
        self._place(device)
        trained = {n: p for n, p in self.primary.module.named_parameters() if p.requires_grad}
        ema = PartitionedEMA(trained, decay=self.ema_decay)
        step, history = 0, []
        if found is not None:
            step, history = self._resume(found, engines, ema)
        result = TrainResult(steps=step, resumed_from=step if found is not None else None)
        end = self.total_steps if max_steps is None else min(self.total_steps, step + max_steps)
        samplers: dict[int, WindowSampler] = {}
        while step < end:
            phase = self.phase_of(step)
            if phase not in samplers:
                samplers[phase] = self._sampler(phase)
            losses, info = self._step(step, samplers[phase], engines, device)
            step += 1
            ema.update()
            reduced = self._mean_over_ranks(losses, device)
            loss = reduced[self.objective.loss_metric]
            history.append(loss)
            result.losses.append(loss)
            frames = float(self.cfg.curriculum[phase].frames)
            metrics = {"loss": loss, **reduced, **info, "clip_frames": frames}
            metrics.update(self._learning_rates(engines))
            self._report(step, end, metrics)
            if step % self.cfg.checkpoint_every == 0 or step == end:
                result.checkpoint = self._checkpoint(step, ema, engines, history) or result.checkpoint
        result.steps = step
        result.seconds = time.perf_counter() - started
        return result

    # -- one optimiser step ------------------------------------------------------------------------
    def phase_of(self, step: int) -> int:
        """The curriculum phase optimiser step ``step`` (0-based) belongs to (the last one past the end)."""
        total = 0
        for i, phase in enumerate(self.cfg.curriculum):
            total += phase.steps
            if step < total:
                return i
        return len(self.cfg.curriculum) - 1

    def _sampler(self, phase: int) -> WindowSampler:
        cfg = self.cfg
        return WindowSampler(
            self.data,
            frames=cfg.curriculum[phase].frames,
            height=cfg.height,
            width=cfg.width,
            seed=cfg.seed + 7919 * phase,
            long_caption_prob=cfg.long_caption_prob,
            twins=cfg.counterfactual_weight > 0,
        )

    def rank_batch(self, sampler: WindowSampler, number: int, *, device: torch.device) -> RankBatch:
        """This rank's share of global batch ``number``: samples ``number·W·B + r·B`` onwards."""
        b = self.cfg.batch_size
        first = number * b * self.world
        indices = list(range(first + self.rank * b, first + self.rank * b + b))
        return RankBatch(sampler.batch(indices), indices, first, b * self.world, self.rank * b, device)

    def _step(
        self, step: int, sampler: WindowSampler, engines: dict[str, Engine], device: torch.device
    ) -> tuple[dict[str, list[float]], Metrics]:
        """The objective's updates of optimiser step ``step``: loss values per metric name, and the
        updates' own (rank-local) metrics."""
        updates = self.objective.updates
        trained = {t.name: t.module for t in self.objective.trained}
        losses: dict[str, list[float]] = {}
        info: Metrics = {}
        for u, update in enumerate(updates):
            batch = self.rank_batch(sampler, step * len(updates) + u, device=device)
            engine = engines[update.module].engine
            trained[update.module].train()
            loss, extra = update.loss(batch, engine)
            engine.backward(loss)
            engine.step()  # an optimizer step at the end of the module's accumulation
            losses.setdefault(update.metric, []).append(float(loss.detach()))
            info.update(extra)
        return losses, info

    def _mean_over_ranks(self, losses: dict[str, list[float]], device: torch.device) -> dict[str, float]:
        """Each metric's mean over this step's updates, then over the ranks (one all-reduce)."""
        values = torch.tensor([sum(v) / len(v) for v in losses.values()], device=device)
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return {name: float(v) for name, v in zip(losses, values, strict=True)}

    def _learning_rates(self, engines: dict[str, Engine]) -> dict[str, float]:
        """Current LR per group: ``lr/GROUP`` with one trained module, ``lr/MODULE/GROUP`` with more."""
        out = {}
        for t in self.objective.trained:
            e = engines[t.name]
            prefix = "lr/" if not self.others else f"lr/{t.name}/"
            for name, group in zip(e.group_names, e.optimizer.param_groups, strict=True):
                out[prefix + name] = float(group["lr"])
        return out

    def _report(self, step: int, end: int, metrics: Metrics) -> None:
        """Rank 0: metrics every ``log_every`` steps and at ``end``, progress every step."""
        if self.rank != 0:
            return
        if self.on_metrics and (step % self.cfg.log_every == 0 or step == end):
            self.on_metrics(step, metrics)
        if self.on_progress:
            self.on_progress(step, self.total_steps)

    # -- engines and resume ------------------------------------------------------------------------
    def _engines(self) -> dict[str, Engine]:
        """Frozen modules partitioned first (ZeRO-3), then one engine per trained module."""
        cfg = self.cfg
        if cfg.zero_stage == 3:
            for f in self.objective.frozen:
                self._frozen_engines.append(partition_frozen(f.module, cfg=cfg, width=f.width))
        return {
            t.name: build_engine(t.module, t.groups, cfg=cfg, width=t.width, accumulation=t.accumulation)
            for t in self.objective.trained
        }

    def _place(self, device: torch.device) -> None:
        """The VAE (unless trained) to ``device``; frozen modules there too in the trained modules'
        dtype, unless their ZeRO-3 engine already holds them."""
        if not self._vae_trained():
            self.vae.to(device)
        if self.cfg.zero_stage < 3:
            dtype = next(self.primary.module.parameters()).dtype  # bf16 once DeepSpeed converted it
            for f in self.objective.frozen:
                f.module.to(device, dtype=dtype)

    def _vae_trained(self) -> TrainedModule | None:
        return next((t for t in self.objective.trained if t.module is self.vae), None)

    def _load_weights(self, found: Path) -> None:
        """Every module's weights from checkpoint ``found``; a frozen one the checkpoint lacks (written
        before it was saved) keeps the weights it was given."""
        extra = {t.name: t.module for t in self.others}
        frozen = [(f.name, f.module) for f in self.objective.frozen]
        if not self._vae_trained():
            frozen.append(("vae", self.vae))
        for name, module in frozen:
            if (found / f"{name}.safetensors").exists():
                extra[name] = module
            else:
                log.warning("%s has no %s: using the %s this trainer was given", found, name, name)
        load_weights(found, model=self.primary.module, extra=extra, model_file=self.objective.primary_file)

    def _resume(
        self, found: Path, engines: dict[str, Engine], ema: PartitionedEMA
    ) -> tuple[int, list[float]]:
        """Optimizer (this rank's shard), scheduler, EMA and RNG state; returns (step, loss history)."""
        with optimizer_state_access(*(e.engine for e in engines.values())):
            state = load_training_state(
                found,
                optimizer=engines[self.primary.name].optimizer,
                ema=None,
                extra={t.name: engines[t.name].optimizer for t in self.others},
            )
        ema.load(load_file(str(found / "ema.safetensors")))
        engines[self.primary.name].scheduler.load_state_dict(state["scheduler"])
        for t in self.others:
            engines[t.name].scheduler.load_state_dict(state[f"{t.name}_scheduler"])
        previous = read_lineage(found)
        if previous is not None:  # the checkpoint resumed from holds the earlier stages too
            this = self.cfg.stage.value
            self.lineage = previous.without_stage(this)
            resumed = previous.stage(this)
            self._read_before = resumed.sources if resumed else []
        log.info("resumed from %s (step %d)", found, state["step"])
        return int(state["step"]), list(state["loss_history"])

    # -- checkpoints -------------------------------------------------------------------------------
    def _checkpoint(
        self, step: int, ema: PartitionedEMA, engines: dict[str, Engine], history: list[float]
    ) -> Path | None:
        """Checkpoint ``step``: collected on every rank, written by rank 0 (its folder; None elsewhere)."""
        saved = None
        self.objective.before_checkpoint(engines[self.primary.name].engine.device)
        lineage = self._stage_lineage()
        with optimizer_state_access(*(e.engine for e in engines.values())):  # shards and save read it
            snapshot = self._snapshot(step, ema, engines)
            if self.rank == 0:
                saved = self._save(step, snapshot, engines, history, lineage)
                if self.on_checkpoint:
                    self.on_checkpoint(saved)
            if self.world > 1:
                dist.barrier()
        if snapshot.shards is not None and self.rank != 0:  # a node of its own: its shard went by on_shard
            shutil.rmtree(snapshot.shards, ignore_errors=True)
        return saved

    def _stage_lineage(self) -> Lineage:
        """The lineage so far: earlier stages', and this stage's sources with the shards every rank
        read (gathered from all ranks: a collective) since the start, across resumes."""
        reads = [self.data.lineage()]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, [s.model_dump() for s in reads[0]])
            reads = [[SourceLineage.model_validate(s) for s in part] for part in gathered]
        sources = merge_sources(self._read_before, *reads)
        return self.lineage.with_stage(StageLineage(stage=self.cfg.stage.value, sources=sources))

    def _snapshot(self, step: int, ema: PartitionedEMA, engines: dict[str, Engine]) -> Snapshot:
        """Full weights and EMA gathered from ZeRO-3 partitions (a collective) and, with a partitioned
        optimizer (ZeRO ≥ 1, several ranks), every rank's optimizer shard in a staging folder.

        Frozen modules are saved too: a resumed run must score against the same weights, and the
        caller that built this trainer cannot be relied on to rebuild them (``worldloop train`` loads
        ``--init`` only into a fresh output folder)."""

        def weights(module: nn.Module) -> Weights:
            return gathered_state_dict(module) if self.cfg.zero_stage == 3 else module

        trained = {t.name: weights(t.module) for t in self.objective.trained}
        frozen = {f.name: weights(f.module) for f in self.objective.frozen}
        full_ema = ema.full()
        shards = None
        if self.cfg.zero_stage >= 1 and self.world > 1:
            shards = self.checkpoint_dir / f".{checkpoint_name(step)}.shards"
            files = [save_optimizer_shard(shards, "optimizer", engines[self.primary.name].optimizer)]
            for t in self.others:
                files.append(save_optimizer_shard(shards, f"{t.name}_optimizer", engines[t.name].optimizer))
            if self.on_shard is not None:  # e.g. uploaded beside the checkpoint, before it is published
                self.on_shard(step, files)
            dist.barrier()  # every shard is on disk or delivered before rank 0 moves them into place
        return Snapshot(trained, frozen, full_ema, shards)

    def _save(
        self, step: int, snap: Snapshot, engines: dict[str, Engine], history: list[float], lineage: Lineage
    ) -> Path:
        """Rank 0 writes checkpoint ``step`` (atomically, with ``vae.safetensors`` and ``spec.json``)."""
        # the VAE travels with every checkpoint: as the primary file when it is what this stage trains
        frozen = snap.frozen if self._vae_trained() else {**snap.frozen, "vae": self.vae}
        state: dict[str, Any] = {"scheduler": engines[self.primary.name].scheduler.state_dict()}
        state.update({f"{t.name}_scheduler": engines[t.name].scheduler.state_dict() for t in self.others})
        state.update(
            config=self.cfg.model_dump(mode="json"),
            loss_history=history,
            world_size=self.world,
            **self.objective.state(),
        )
        if snap.shards is not None and self.on_shard is None:
            missing = missing_shards(snap.shards, "optimizer", self.world)
            if missing:
                raise RuntimeError(
                    f"checkpoint {step}: the optimizer shards of ranks {missing} are not in {snap.shards}: "
                    "the ranks do not share the checkpoint folder; train into a folder every rank shares "
                    "or an s3:// output (each rank uploads its shard)"
                )
        return save_checkpoint(
            self.checkpoint_dir,
            step,
            model=snap.trained[self.primary.name],
            optimizer=engines[self.primary.name].optimizer,
            ema=snap.ema,
            extra={t.name: (snap.trained[t.name], engines[t.name].optimizer) for t in self.others},
            frozen=frozen,
            shards=snap.shards,
            num_shards=self.world if snap.shards is not None else None,
            state=state,
            metadata=self.objective.metadata(),
            spec=None if self.spec is None else self.objective.checkpoint_spec(self.spec),
            model_file=self.objective.primary_file,
            files={LINEAGE_FILE: lineage.model_dump_json(indent=1).encode()},
        )


def build_trainer(
    cfg: TrainConfig,
    model: WorldModel,
    *,
    vae: CausalVideoVAE,
    text_encoder: TextEncoder,
    data: Mixture,
    checkpoint_dir: str | Path,
    spec: ModelSpec | None = None,
    lineage: Lineage | None = None,
    on_metrics: MetricsCallback | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    on_shard: Callable[[int, list[Path]], None] | None = None,
    teacher: WorldModel | None = None,
    critic: WorldModel | None = None,
) -> Trainer:
    """The trainer of stage ``cfg.stage`` for ``model`` (stage 3/4: the student; the frozen ``teacher``
    and the ``critic`` default to copies of it in stage 3, stage 4 needs the stage-2 teacher), with
    the frozen ``vae`` and ``text_encoder`` preparing its inputs; stage 0 (``vae``) trains ``vae``
    itself and leaves ``model`` untouched."""
    objective: Objective
    if cfg.stage is Stage.vae:
        objective = VAEObjective(cfg, vae, data=data)
    elif cfg.stage in (Stage.action, Stage.instruction):
        objective = FlowMatchingObjective(cfg, model, vae=vae, text_encoder=text_encoder)
    elif cfg.stage is Stage.distill:
        objective = DistillObjective(
            cfg, model, vae=vae, text_encoder=text_encoder, teacher=teacher, critic=critic
        )
    else:
        objective = LongExtensionObjective(
            cfg, model, vae=vae, text_encoder=text_encoder, teacher=teacher, critic=critic
        )
    return Trainer(
        cfg,
        objective,
        vae=vae,
        data=data,
        checkpoint_dir=checkpoint_dir,
        spec=spec,
        lineage=lineage,
        on_metrics=on_metrics,
        on_progress=on_progress,
        on_checkpoint=on_checkpoint,
        on_shard=on_shard,
    )
