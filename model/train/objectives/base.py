"""What an objective gives the training loop (:mod:`worldloop.model.train.loop`).

An objective names its trained modules with their parameter groups and learning rates, its frozen
modules, and the ordered updates of one optimiser step; each update is a loss on this rank's share of
one global batch. The loop owns everything else: engines, resume, EMA, metric reduction, checkpoints.
Nothing here assumes a world model: a trained module is any ``nn.Module`` (the causal VAE of stage 0
fits as well as the DiT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from worldloop.model.spec import ModelSpec
from worldloop.model.train.windows import Window

RESERVED = ("model", "ema", "optimizer", "vae")  # checkpoint files no other module may take
Forward = Callable[..., Tensor]  # the module's DeepSpeed engine, called in place of the module
Metrics = dict[str, float]


@dataclass(frozen=True)
class LrGroup:
    """A named optimizer parameter group with its own learning rate (e.g. one per MoE expert)."""

    name: str
    params: list[nn.Parameter]
    lr: float


def freeze_except(module: nn.Module, groups: Sequence[LrGroup]) -> tuple[LrGroup, ...]:
    """Freeze every parameter of ``module`` but those of ``groups``; returns ``groups``."""
    for p in module.parameters():
        p.requires_grad_(False)
    for g in groups:
        for p in g.params:
            p.requires_grad_(True)
    return tuple(groups)


@dataclass(frozen=True)
class TrainedModule:
    """A module the loop wraps in a DeepSpeed engine with its own optimizer and scheduler.

    The first trained module of an objective is its *primary* one: the checkpoint stores it as
    ``model.safetensors`` (and its optimizer as ``optimizer.safetensors``) and the loop keeps its EMA;
    the others are stored under their ``name`` (``critic.safetensors``, ``critic_optimizer...``).
    """

    name: str  # in metrics ("lr/student/expert0") and file names of non-primary modules
    module: nn.Module
    groups: tuple[LrGroup, ...]  # the parameters it trains (everything else in it is frozen)
    width: int  # hidden size: ZeRO-3 keeps parameters under 10·width whole on every rank
    accumulation: int = 1  # updates (micro-batches) of this module per optimiser step


@dataclass(frozen=True)
class FrozenModule:
    """A module the updates call without training it (the stage-3 teacher); saved with every
    checkpoint so a resumed run scores against the same weights, partitioned under ZeRO-3."""

    name: str
    module: nn.Module
    width: int


@dataclass(frozen=True)
class RankBatch:
    """This rank's share of one global batch of ``world·B`` samples: rank ``r`` takes samples
    ``first + r·B .. first + r·B + B - 1``.

    Per-sample noise is drawn from generators seeded by ``indices``; every choice that decides which
    modules run (exit steps, rollout length) must be drawn from ``first``, shared by all ranks.
    """

    windows: list[Window]  # B windows, video (3, F, H, W) each
    indices: list[int]  # their sample indices
    first: int  # the global batch's first sample index
    global_batch: int  # world·B: the rows of every global-batch noise draw
    first_row: int  # r·B: this rank's first row of such a draw
    device: torch.device


UpdateLoss = Callable[[RankBatch, Forward], tuple[Tensor, Metrics]]


@dataclass(frozen=True)
class Update:
    """One backward + engine step of the trained module ``module`` on a fresh global batch.

    ``loss`` returns the scalar loss and rank-local metrics. Its value is reported under ``metric``,
    averaged over the step's updates with that name and over the ranks.
    """

    module: str
    metric: str
    loss: UpdateLoss


class Objective:
    """Base of every training objective; subclasses set the attributes in ``__init__``."""

    trained: tuple[TrainedModule, ...]  # [0] is the primary module (model.safetensors, EMA)
    frozen: tuple[FrozenModule, ...] = ()
    updates: tuple[Update, ...]  # in order, one optimiser step
    loss_metric: str = "loss"  # the update metric reported as "loss" and kept in the loss history
    primary_file: str = "model"  # the checkpoint file of the primary module ("vae" for stage 0)

    def check(self) -> None:
        """Names that fit the checkpoint layout; updates that step each trained module in whole
        accumulations (else its engine would step the optimizer mid-step)."""
        if not self.trained:
            raise ValueError(f"{type(self).__name__} trains no module")
        names = [t.name for t in self.trained] + [f.name for f in self.frozen]
        if len(set(names)) != len(names) or any(n in RESERVED for n in names[1:]):
            raise ValueError(f"module names must be unique and not {RESERVED} (but the first): {names}")
        for t in self.trained:
            count = sum(u.module == t.name for u in self.updates)
            if count == 0 or count % t.accumulation:
                raise ValueError(
                    f"{t.name}: {count} updates per step is not a whole number of its {t.accumulation}-"
                    "micro-batch accumulations"
                )
        unknown = {u.module for u in self.updates} - {t.name for t in self.trained}
        if unknown:
            raise ValueError(f"updates of modules that are not trained: {sorted(unknown)}")

    def before_checkpoint(self, device: torch.device) -> None:
        """Called on every rank before a checkpoint is collected (stage 0 re-measures the VAE's latent
        statistics here); a no-op by default."""

    def state(self) -> dict[str, Any]:
        """Extra entries of ``state.json`` (small, JSON-able)."""
        return {}

    def metadata(self) -> dict[str, str]:
        """safetensors metadata of ``model.safetensors`` (e.g. the primary module's config)."""
        return {}

    def checkpoint_spec(self, spec: ModelSpec) -> ModelSpec:
        """The spec a checkpoint of this objective carries (stage 3 adds the student's timesteps)."""
        return spec
