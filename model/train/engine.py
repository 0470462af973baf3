"""DeepSpeed set-up for the training loop: the process group, one engine per trained module and the
optimizer-less ZeRO-3 engine of a frozen module (the ZeRO rules are in :mod:`.loop`'s docstring).

No tracking service is imported here, and nothing here knows which module it wraps: world model,
critic or VAE alike come with their named parameter groups and their width.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from worldloop.model.train.config import TrainConfig
from worldloop.model.train.ds_ops import load_shm_op
from worldloop.model.train.objectives.base import LrGroup


def ensure_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise torch.distributed (gloo on CPU, nccl on GPU); world size 1 needs no launcher.

    Under ``torchrun`` the rendezvous comes from its environment. A lone process rendezvous through a
    file in a private temporary folder instead of a TCP port, so concurrent runs cannot collide. A
    launcher that formed the group itself (Ray Train's TorchTrainer, which also sets ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` as torchrun does) keeps its group: DeepSpeed
    only wraps it. Returns ``(rank, world_size)``.
    """
    import deepspeed

    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if "WORLD_SIZE" not in os.environ:
            store = Path(tempfile.mkdtemp(prefix="worldloop-dist-")) / "rendezvous"
            dist.init_process_group(backend, init_method=store.as_uri(), rank=0, world_size=1)
            os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed reads it; WORLD_SIZE stays unset
    if not deepspeed.comm.is_initialized():
        load_shm_op()  # its JIT build, guarded: a build killed earlier cannot hang this run (ds_ops)
        deepspeed.init_distributed(dist_backend=backend or str(dist.get_backend()))
    return dist.get_rank(), dist.get_world_size()


def zero_optimization(stage: int, module: nn.Module, *, width: int) -> dict[str, Any]:
    """DeepSpeed's ``zero_optimization`` section for ``stage``; under ZeRO-3 also marks ``module``'s
    leaf modules (call it before ``deepspeed.initialize``). ``width``: the module's hidden size."""
    if stage < 3:
        return {"stage": stage}
    from deepspeed.utils import set_z3_leaf_modules

    # MultiheadAttention multiplies by out_proj.weight without calling out_proj. Inside the engine's
    # forward ZeRO-3 fetches such a parameter on access (one more blocking gather), outside it (rollouts,
    # samples) nothing does: as a leaf the whole module is gathered on entry.
    set_z3_leaf_modules(module, [nn.MultiheadAttention], raise_if_not_found=False)
    # Parameters below the threshold stay whole on every rank (biases, norms, modulation vectors):
    # one collective each would cost more than it saves. 10·width is the usual choice (HF "auto").
    return {"stage": 3, "stage3_param_persistence_threshold": 10 * width}


def schedule_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """LambdaLR factor of optimiser step ``step``: linear warm-up over ``warmup_steps``, then 1
    (``constant``) or a cosine from 1 down to ``min_lr_ratio`` at the curriculum's last step."""
    warmup, total, floor = cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass(frozen=True)
class Engine:
    """A trained module's DeepSpeed engine with the torch optimizer and scheduler it steps."""

    engine: Any  # deepspeed.DeepSpeedEngine: call it for the forward, then .backward(loss), .step()
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    group_names: tuple[str, ...]  # optimizer.param_groups[i] is group_names[i]


def _precision(cfg: TrainConfig) -> dict[str, Any]:
    return {"enabled": cfg.precision.value == "bf16"}


def build_engine(
    module: nn.Module, groups: Sequence[LrGroup], *, cfg: TrainConfig, width: int, accumulation: int
) -> Engine:
    """AdamW + warm-up LambdaLR over ``groups`` in a DeepSpeed engine around ``module``.

    ``accumulation``: micro-batches per optimiser step (the engine steps the optimizer on the last).
    bf16 (from ``cfg``) converts ``module`` itself; gradient clipping and the ZeRO stage come from
    ``cfg`` too.
    """
    import deepspeed

    optimizer = torch.optim.AdamW(
        [{"params": g.params, "lr": g.lr} for g in groups], weight_decay=cfg.weight_decay, betas=cfg.betas
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lambda(cfg))
    ds_config = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero_optimization(cfg.zero_stage, module, width=width),
        "bf16": _precision(cfg),
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return Engine(engine, optimizer, scheduler, tuple(g.name for g in groups))


def partition_frozen(module: nn.Module, *, cfg: TrainConfig, width: int) -> Any:
    """ZeRO-3: partition a frozen ``module`` like the trained ones (an engine with no optimizer), in
    the trained modules' dtype. Returns the engine; ``module`` itself is then called as usual."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=module,
        config={
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "zero_optimization": zero_optimization(cfg.zero_stage, module, width=width),
            "bf16": _precision(cfg),
            "steps_per_print": 1 << 30,
        },
    )
    return engine
