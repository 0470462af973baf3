"""Attention kernels behind one call: PyTorch SDPA (default) or SageAttention on CUDA (DESIGN.md §5.4).

SageAttention (``sageattention.sageattn``) quantises Q/K to int8 and P/V to fp8/fp16 inside the kernel;
it is ~2× faster than FlashAttention-2 on Ada/Hopper but only covers the case we run at inference:
CUDA, fp16/bf16, head dim 64/96/128 and **no mask** (full attention over the current block and its KV
cache). Training uses block-causal masks, so it stays on SDPA. ``sageattention`` is an optional GPU extra
(``pip install worldloop[gpu]``) and is imported lazily, only when the sage path is taken.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.model.config import AttentionBackend

SAGE_HEAD_DIMS = (64, 96, 128)
SAGE_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def _sage_installed() -> bool:
    return importlib.util.find_spec("sageattention") is not None


def _sage_unusable_reason(q: Tensor, *, has_mask: bool) -> str | None:
    """Why SageAttention cannot run these inputs, or ``None`` if it can."""
    if not q.is_cuda:
        return f"it needs CUDA tensors, got device {q.device}"
    if q.shape[-1] not in SAGE_HEAD_DIMS:
        return f"it supports head dims {SAGE_HEAD_DIMS}, got {q.shape[-1]}"
    if q.dtype not in SAGE_DTYPES:
        return f"it needs fp16/bf16 inputs, got {q.dtype}"
    if has_mask:
        return "it does not take an attention mask (use sdpa for masked/block-causal attention)"
    if not _sage_installed():
        return "the `sageattention` package is not installed (pip install 'worldloop[gpu]')"
    return None


def _sage_pays_off(q: Tensor) -> bool:
    """Whether ``auto`` should prefer SageAttention on this GPU.

    SageAttention 1 (Triton) beats FlashAttention-2 on Ampere/Ada, but on Hopper PyTorch's SDPA
    (FlashAttention/cuDNN for sm_90) is faster: measured on an H100 with torch 2.11 and
    sageattention 1.0.6 at the 480p rollout shape (Lq 4,680, Lk 20,280, D 128), SDPA took 0.57–0.59x
    of SageAttention's time (``benchmarks/bench_gpu.py``). ``sage`` still forces it everywhere.
    """
    return torch.cuda.get_device_capability(q.device)[0] < 9


def sage_available(q: Tensor, *, has_mask: bool) -> bool:
    """Whether :func:`attend` can use SageAttention for queries like ``q`` ``(B, H, Lq, D)``."""
    return _sage_unusable_reason(q, has_mask=has_mask) is None


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attend expects q, k, v as (B, H, L, D); "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            "attend needs q (B, H, Lq, D) and k, v (B, H, Lk, D) with matching B, H, D; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if attn_mask is None:
        return
    if attn_mask.dtype != torch.bool:
        raise ValueError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    # Each mask dim must be 1 or match; unlike torch.broadcast_shapes, the mask may not grow the output.
    pairs = zip(reversed(attn_mask.shape), reversed(target), strict=False)  # mask may have < 4 dims
    if attn_mask.dim() > 4 or any(m not in (1, t) for m, t in pairs):
        raise ValueError(
            f"attn_mask {tuple(attn_mask.shape)} does not broadcast to (B, H, Lq, Lk) = {target}"
        )


def _sage(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    module = importlib.import_module("sageattention")
    sageattn = cast(Callable[..., Tensor], module.sageattn)
    # HND = (B, H, L, D), our layout; softmax scale defaults to 1/sqrt(D) as in SDPA.
    return sageattn(q, k, v, tensor_layout="HND", is_causal=False)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    backend: AttentionBackend = AttentionBackend.sdpa,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """``softmax(q kᵀ / √D + mask) v`` with the chosen kernel.

    Args:
        q: ``(B, H, Lq, D)``; k, v: ``(B, H, Lk, D)``.
        backend: see :class:`AttentionBackend`; ``sage`` where it cannot run raises ``ValueError``.
        attn_mask: bool, broadcastable to ``(B, H, Lq, Lk)``, ``True`` = may attend. Every query row
            needs at least one ``True`` (a fully masked row has no defined softmax).
    Returns:
        ``(B, H, Lq, D)`` in ``q.dtype``.
    """
    _check_inputs(q, k, v, attn_mask)
    backend = AttentionBackend(backend)
    has_mask = attn_mask is not None
    if backend is AttentionBackend.sage:
        reason = _sage_unusable_reason(q, has_mask=has_mask)
        if reason is not None:
            raise ValueError(f"attention backend 'sage' cannot run here: {reason}; use 'sdpa' or 'auto'")
        return _sage(q, k, v)
    if backend is AttentionBackend.auto and sage_available(q, has_mask=has_mask) and _sage_pays_off(q):
        return _sage(q, k, v)
    if attn_mask is not None and attn_mask.dim() < 4:
        # SDPA kernels index mask dims -2/-1 directly; a view to 4D makes every broadcastable mask work.
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
