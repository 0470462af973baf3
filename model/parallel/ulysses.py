"""Ulysses sequence parallelism (DeepSpeed-Ulysses, arXiv 2309.14509), applied from outside the model.

Every worker of a process group holds 1/N of each forward's tokens. Per-token work (patch/camera
embedding, norms, AdaLN modulation, cross-attention to the replicated text context, FFN, head) runs on
the local tokens with all heads. Self-attention exchanges all-to-all: (B, L/N, H, Dh) local tokens →
(B, L, H/N, Dh) every token of this worker's heads, attends there (with the KV-cache prefix, which
under SP holds H/N heads), and exchanges back before the output projection. After the head the
velocity is all-gathered, so every worker returns the same full (B, C, F, h, w) — DESIGN.md §5.4.

Sharding is per frame along the within-frame token axis (B, F·P, dim) → (B, F, P/N, dim), so the
per-frame modulation of :class:`~worldloop.model.arch.transformer_block.DiTBlock` stays valid, and so
does a per-token cross-attention mask (multi-turn instructions), which the expert shards with
:meth:`SequenceParallel.shard` exactly like the tokens it belongs to. After
the exchange the tokens are in *worker-major* order (worker 0's tokens of every frame, then worker 1's
…): attention does not care about key order, so a training mask is permuted to that order instead of
permuting the tokens, and each KV-cache block slot holds its block's keys in that order.

Training: the exchanges are autograd functions (the backward of an all-to-all is the inverse
all-to-all); the backward of the final gather keeps this worker's slice, which is exact because every
worker computes the same loss from the same gathered output. Parameter gradients are then partial sums
over the local tokens: :meth:`SequenceParallel.reduce_gradients` sums them over the group.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup

from worldloop.model.arch.transformer_block import SelfAttention
from worldloop.model.arch.world_model import WorldModel


def _all_to_all(
    x: Tensor, group: ProcessGroup | None, size: int, scatter_dim: int, gather_dim: int
) -> Tensor:
    """Chunk ``x`` into ``size`` parts along ``scatter_dim`` (part j → worker j); concatenate the parts
    received along ``gather_dim`` in worker order."""
    parts = x.unflatten(scatter_dim, (size, -1)).movedim(scatter_dim, 0)  # (N, ...) part j for worker j
    if x.numel() == 0:  # an expert no sample chose (training): every worker skips alike
        received = parts
    else:
        parts = parts.contiguous()
        received = torch.empty_like(parts)
        # all_to_all_single runs on NCCL and on gloo (CPU) alike in torch ≥ 2.1
        dist.all_to_all_single(received, parts, group=group)  # received[i] came from worker i
    return received.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, group: ProcessGroup | None, size: int, scatter_dim: int, gather_dim: int
    ) -> Tensor:
        ctx.exchange = (group, size, scatter_dim, gather_dim)
        return _all_to_all(x, group, size, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        group, size, scatter_dim, gather_dim = ctx.exchange
        return _all_to_all(grad, group, size, gather_dim, scatter_dim), None, None, None, None


def _frame_major(parts: list[Tensor], *, num_frames: int, dim: int) -> Tensor:
    """Every worker's (.., F·P/N, ..) tokens along ``dim`` → (.., F·P, ..), frame-major again."""
    frames = [p.unflatten(dim, (num_frames, -1)) for p in parts]  # (.., F, P/N, ..)
    return torch.stack(frames, dim=dim + 1).flatten(dim, dim + 2)  # (.., F, N, P/N, ..) → (.., F·P, ..)


class _GatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, sp: SequenceParallel, num_frames: int, dim: int) -> Tensor:
        ctx.gather = (sp, num_frames, dim)
        parts = [torch.empty_like(x) for _ in range(sp.world_size)]
        if x.numel():
            dist.all_gather(parts, x.contiguous(), group=sp.group)
        return _frame_major(parts, num_frames=num_frames, dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        sp, num_frames, dim = ctx.gather
        # Every worker holds the same loss of the same gathered output: its slice is the exact gradient.
        return sp.shard(grad, num_frames=num_frames, dim=dim), None, None, None


class SequenceParallel:
    """The hooks :func:`apply_sequence_parallel` installs: token sharding (experts) and the head
    exchange (self-attention). Keep it to call :meth:`reduce_gradients` or :meth:`remove`."""

    def __init__(self, model: WorldModel, group: ProcessGroup | None) -> None:
        self.model = model
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    # -- TokenSharding (ExpertTransformer.token_sharding) --------------------------------------------
    def _tokens_per_worker(self, length: int, num_frames: int) -> int:
        per_frame, n = length // num_frames, self.world_size
        if length != per_frame * num_frames or per_frame % n:
            raise ValueError(
                f"sequence parallel over {n} workers needs the tokens per latent frame ({length} tokens "
                f"over {num_frames} frames) to be a multiple of {n}: pick a height/width whose patch grid "
                f"(h/16 · w/16 for an 8× VAE and 2×2 patches) divides by {n}, or use fewer workers"
            )
        return per_frame // n

    def shard(self, x: Tensor, *, num_frames: int, dim: int) -> Tensor:
        """(.., F·P, ..) along ``dim`` → this worker's (.., F·P/N, ..): tokens [r·P/N, (r+1)·P/N) of
        every frame, r = this worker's rank in the group."""
        p = self._tokens_per_worker(x.shape[dim], num_frames)
        frames = x.unflatten(dim, (num_frames, self.world_size, p))  # (.., F, N, P/N, ..)
        return frames.select(dim + 1, self.rank).flatten(dim, dim + 1)

    def gather(self, x: Tensor, *, num_frames: int, dim: int) -> Tensor:
        """Every worker's (.., F·P/N, ..) → (.., F·P, ..) frame-major; the same on every worker."""
        out = _GatherTokens.apply(x, self, num_frames, dim)
        assert isinstance(out, Tensor)
        return out

    def worker_major(self, num_tokens: int, *, num_frames: int) -> Tensor:
        """Frame-major index of each token in the order self-attention sees them (worker by worker)."""
        p = self._tokens_per_worker(num_tokens, num_frames)
        order = torch.arange(num_tokens).unflatten(0, (num_frames, self.world_size, p))  # (F, N, P/N)
        return order.transpose(0, 1).flatten()

    def attention_mask(self, mask: Tensor, *, num_frames: int) -> Tensor:
        """(L, Lpast + L) over frame-major tokens → the same mask over worker-major tokens."""
        length = mask.shape[0]
        order = self.worker_major(length, num_frames=num_frames).to(mask.device)
        past = torch.arange(mask.shape[1] - length, device=mask.device)
        return mask[order][:, torch.cat([past, past.numel() + order])]

    # -- HeadExchange (SelfAttention.head_exchange) ---------------------------------------------------
    def to_heads(self, x: Tensor) -> Tensor:
        """(B, L/N, H, Dh) this worker's tokens → (B, L, H/N, Dh) every token of its heads."""
        out = _AllToAll.apply(x, self.group, self.world_size, 2, 1)
        assert isinstance(out, Tensor)
        return out

    def to_tokens(self, x: Tensor) -> Tensor:
        """(B, L, H/N, Dh) → (B, L/N, H, Dh), the inverse of :meth:`to_heads`."""
        out = _AllToAll.apply(x, self.group, self.world_size, 1, 2)
        assert isinstance(out, Tensor)
        return out

    # -- lifecycle ------------------------------------------------------------------------------------
    def reduce_gradients(self) -> None:
        """Sum parameter gradients over the group (each worker's are partial: its tokens only).

        Call after ``backward`` and before the optimizer (or before data-parallel averaging, which
        must then run over the data-parallel group, not over these workers).
        """
        for param in self.model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM, group=self.group)

    def remove(self) -> None:
        """Restore the single-device model (caches made under SP do not fit it: make new ones)."""
        _install(self.model, None)


def _install(model: WorldModel, sp: SequenceParallel | None) -> None:
    for i in range(model.cfg.num_experts):
        model.expert(i).token_sharding = sp
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.head_exchange = sp
    model.cache_heads = None if sp is None else model.cfg.num_heads // sp.world_size


def apply_sequence_parallel(model: WorldModel, group: ProcessGroup | None = None) -> SequenceParallel:
    """Make ``model`` run Ulysses sequence parallel over ``group`` (default: the world), in place.

    Every worker of ``group`` then runs the same calls with the same inputs (same seeds), holds 1/N of
    each forward's tokens and returns the full output; ``model.new_cache`` allocates H/N heads.
    Raises ``ValueError`` when the heads do not divide over the workers (tokens per frame are checked
    at each forward) or when the model is already parallel.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("sequence parallel needs torch.distributed.init_process_group(...) first")
    if model.cache_heads is not None or any(
        model.expert(i).token_sharding is not None for i in range(model.cfg.num_experts)
    ):
        raise ValueError("model is already sequence parallel: call .remove() on its handle first")
    sp = SequenceParallel(model, group)
    heads = model.cfg.num_heads
    if heads % sp.world_size:
        raise ValueError(
            f"sequence parallel splits the {heads} attention heads over {sp.world_size} workers: "
            f"use a number of workers that divides {heads}"
        )
    _install(model, sp)
    return sp
