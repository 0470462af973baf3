"""One DiT block: modulated self-attention (3D RoPE, optional KV prefix), cross-attention, FFN.

Parameter names follow Wan2.x (``self_attn.q``, ``norm3``, ``ffn.0``, ``modulation`` …) so the
Wan2.2 adapter is a key map, not a re-implementation. Attention runs through
:func:`worldloop.model.arch.attention.attend` so SDPA and SageAttention are interchangeable.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from worldloop.model.arch.attention import AttentionBackend, attend
from worldloop.model.arch.embeddings import modulation_parameter
from worldloop.model.arch.rope import apply_rope


class RMSNorm(nn.Module):
    """``x / rms(x) · weight`` computed in float32 (Wan's ``WanRMSNorm``)."""

    def __init__(self, dim: int, *, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


class HeadExchange(Protocol):
    """Hook that lets self-attention see every token while each worker holds a share of them.

    Set on :attr:`SelfAttention.head_exchange` from outside (``worldloop.model.parallel``, Ulysses);
    the module itself stays single-device. ``N`` is the number of workers.
    """

    def to_heads(self, x: Tensor) -> Tensor:
        """(B, L/N, H, Dh) this worker's tokens → (B, L, H/N, Dh) every token, this worker's heads."""
        ...

    def to_tokens(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`to_heads`: (B, L, H/N, Dh) → (B, L/N, H, Dh)."""
        ...


class SelfAttention(nn.Module):
    """Multi-head self-attention whose rotated keys/values can be cached by the caller."""

    def __init__(self, dim: int, num_heads: int, *, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q: nn.Module = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k: nn.Module = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.backend = AttentionBackend.sdpa
        # None: single device. Set by worldloop.model.parallel for sequence parallelism; then past_k/v,
        # the mask and the returned k/v cover every token but only this worker's heads.
        self.head_exchange: HeadExchange | None = None

    def forward(
        self,
        x: Tensor,
        *,
        cos: Tensor,
        sin: Tensor,
        past_k: Tensor | None = None,
        past_v: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, L, dim); past_k/v (B, Lp, H, Dh) already rotated; mask (L, Lp + L) bool.

        Returns the output (B, L, dim) and this call's rotated keys and values (B, L, H, Dh), which
        the caller may write into its KV cache. With a :attr:`head_exchange`, x/cos/sin/output hold this
        worker's tokens and past_k/v, the mask and the returned k/v every token of its heads.
        """
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # (B, L, H, Dh)
        k = self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1))
        v = self.v(x).unflatten(-1, (self.num_heads, -1))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        exchange = self.head_exchange
        if exchange is not None:  # (B, L/N, H, Dh) → (B, L, H/N, Dh)
            q, k, v = exchange.to_heads(q), exchange.to_heads(k), exchange.to_heads(v)
        keys, values = k, v
        if past_k is not None and past_v is not None:
            keys, values = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
        out = attend(
            q.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            backend=self.backend,
            attn_mask=attn_mask,
        ).transpose(1, 2)  # (B, L, H, Dh)
        if exchange is not None:  # (B, L, H/N, Dh) → (B, L/N, H, Dh)
            out = exchange.to_tokens(out)
        return self.o(out.flatten(2)), k, v


class CrossAttention(nn.Module):
    """Attention from video tokens to the text + interaction context (keys/values cacheable)."""

    def __init__(self, dim: int, num_heads: int, *, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q: nn.Module = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k: nn.Module = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.backend = AttentionBackend.sdpa

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context (B, Lc, dim) → keys, values (B, Lc, H, Dh); what the cross-attention cache holds."""
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, -1))
        v = self.v(context).unflatten(-1, (self.num_heads, -1))
        return k, v

    def forward(
        self,
        x: Tensor,
        *,
        k: Tensor,
        v: Tensor,
        context_mask: Tensor,
        token_context_mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, L, dim), k/v (B, Lc, H, Dh), context_mask (B, Lc) bool → (B, L, dim).

        ``token_context_mask`` (B, L, Lc) bool, when given, replaces ``context_mask`` with one row per
        query token (multi-turn instructions: a token sees the turn in force at its frame). Either
        mask needs SDPA: SageAttention takes none, and :func:`set_attention_backend` keeps
        cross-attention off it (``attend`` raises if it is forced, and ``auto`` falls back to SDPA).
        """
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        # (B, 1, 1, Lc) for every token alike, or (B, 1, L, Lc) one row per token
        mask = context_mask[:, None, None, :] if token_context_mask is None else token_context_mask[:, None]
        out = attend(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), backend=self.backend, attn_mask=mask
        )
        return self.o(out.transpose(1, 2).flatten(2))


class DiTBlock(nn.Module):
    """Wan2.x attention block with per-frame AdaLN modulation (six chunks: shift/scale/gate ×2)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, *, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm=qk_norm, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, qk_norm=qk_norm, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = modulation_parameter(6, dim)

    def forward(
        self,
        x: Tensor,
        *,
        e6: Tensor,
        cos: Tensor,
        sin: Tensor,
        context_kv: tuple[Tensor, Tensor],
        context_mask: Tensor,
        token_context_mask: Tensor | None = None,
        past_kv: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, F·P, dim) frame-major; e6 (B, F, 6, dim); token_context_mask (B, F·P, Lc) or None
        (see :class:`CrossAttention`). Returns x and this block's (k, v)."""
        b, f = e6.shape[:2]
        mod = (self.modulation.float() + e6.float()).unsqueeze(2)  # (B, F, 1, 6, dim)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(dim=3)  # each (B, F, 1, dim)

        def per_frame(t: Tensor) -> Tensor:
            return t.unflatten(1, (f, -1))  # (B, F, P, dim)

        # 1. modulated self-attention (block-causal mask in training, KV prefix in streaming)
        h = (per_frame(self.norm1(x).float()) * (1 + scale1) + shift1).flatten(1, 2).to(x.dtype)
        past_k, past_v = past_kv if past_kv is not None else (None, None)
        y, k, v = self.self_attn(h, cos=cos, sin=sin, past_k=past_k, past_v=past_v, attn_mask=attn_mask)
        x = x + (per_frame(y.float()) * gate1).flatten(1, 2).to(x.dtype)
        # 2. cross-attention to text + interaction tokens (no modulation, as in Wan)
        x = x + self.cross_attn(
            self.norm3(x),
            k=context_kv[0],
            v=context_kv[1],
            context_mask=context_mask,
            token_context_mask=token_context_mask,
        )
        # 3. modulated feed-forward
        h = (per_frame(self.norm2(x).float()) * (1 + scale2) + shift2).flatten(1, 2).to(x.dtype)
        x = x + (per_frame(self.ffn(h).float()) * gate2).flatten(1, 2).to(x.dtype)
        return x, k, v
