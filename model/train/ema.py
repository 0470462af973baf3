"""Exponential moving average of a module's trained parameters, kept per ZeRO-3 partition.

Under ZeRO-3 a rank holds only its partition of each parameter (``param.ds_tensor``), so each rank
averages just that part: no gather per step. A checkpoint gathers the parts (a collective), and a
resumed rank takes its own slice of the saved full tensors back.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from worldloop.model.train.checkpoint import gather_shards, is_partitioned, local_shard, shard_of


class PartitionedEMA:
    """fp32 EMA of ``params`` (name → trained parameter), this rank's partition of each under ZeRO-3."""

    def __init__(self, params: Mapping[str, nn.Parameter], *, decay: float) -> None:
        self.params, self.decay = dict(params), decay
        self.shadow = {n: local_shard(p).detach().clone().float() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """ema ← decay·ema + (1 − decay)·param, on this rank's part of each parameter."""
        for n, p in self.params.items():
            self.shadow[n].mul_(self.decay).add_(local_shard(p).detach().float(), alpha=1 - self.decay)

    def load(self, full: Mapping[str, Tensor]) -> None:
        """Take this rank's part of the full (saved) tensors."""
        for n, tensor in full.items():
            self.shadow[n].copy_(shard_of(tensor, self.params[n]))

    def full(self) -> dict[str, Tensor]:
        """Full tensors: gathered on rank 0 under ZeRO-3 (a collective: every rank calls it; {} on the
        others), else the averages themselves."""
        if any(is_partitioned(p) for p in self.params.values()):
            return gather_shards(self.shadow, self.params)
        return self.shadow
