"""One expert: a Wan2.x image-to-video DiT over latent tokens (DESIGN.md §5.1).

The MoE world model holds one of these per noise regime. Module names mirror Wan2.x so a Wan2.2
expert checkpoint maps onto it key for key (``worldloop.model.weights.wan``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from worldloop.model.arch.embeddings import (
    TimeEmbedding,
    init_linear_,
    modulation_parameter,
    patchify,
    sinusoidal_embedding,
    text_projection,
    unpatchify,
)
from worldloop.model.arch.rope import rope_cos_sin, token_positions
from worldloop.model.arch.transformer_block import DiTBlock
from worldloop.model.config import ModelConfig

KV = tuple[Tensor, Tensor]


class TokenSharding(Protocol):
    """Hook splitting one forward's tokens across workers (set by ``worldloop.model.parallel``).

    Tokens are frame-major, ``num_frames`` frames of P tokens; a worker holds its share of every frame,
    so per-frame modulation still applies to its tokens unchanged.
    """

    def shard(self, x: Tensor, *, num_frames: int, dim: int) -> Tensor:
        """This worker's tokens of ``x``, whose ``dim`` is the (F·P) token axis → F·P/N tokens."""
        ...

    def gather(self, x: Tensor, *, num_frames: int, dim: int) -> Tensor:
        """Every worker's tokens, back in frame-major order: F·P/N → F·P along ``dim``."""
        ...

    def attention_mask(self, mask: Tensor, *, num_frames: int) -> Tensor:
        """``mask`` (F·P, Lpast + F·P) over frame-major tokens → over the order self-attention sees."""
        ...


class Head(nn.Module):
    """Final modulated LayerNorm + linear back to patch pixels (Wan ``head``)."""

    def __init__(self, dim: int, out_features: int, *, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = modulation_parameter(2, dim)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x (B, F·P, dim), e (B, F, dim) → (B, F·P, out_features)."""
        f = e.shape[1]
        shift, scale = (self.modulation.float() + e.float().unsqueeze(2)).unbind(dim=2)  # (B, F, dim)
        h = self.norm(x).float().unflatten(1, (f, -1)) * (1 + scale[:, :, None]) + shift[:, :, None]
        return self.head(h.flatten(1, 2).to(x.dtype))


class ExpertTransformer(nn.Module):
    """Patch embed → ``num_layers`` DiT blocks → head. Shapes are documented per method."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(
            cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.text_embedding = text_projection(cfg.text_dim, d)
        time = TimeEmbedding(cfg.freq_dim, d)
        self.time_embedding, self.time_projection = time.time_embedding, time.time_projection
        self.blocks = nn.ModuleList(
            DiTBlock(d, cfg.ffn_dim, cfg.num_heads, qk_norm=cfg.qk_norm, eps=cfg.eps)
            for _ in range(cfg.num_layers)
        )
        out = cfg.latent_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
        self.head = Head(d, out, eps=cfg.eps)
        # Activation checkpointing per DiT block (training only): recompute each block in backward
        # instead of storing its activations. Set with :func:`set_gradient_checkpointing`.
        self.gradient_checkpointing = False
        # None: single device. Set by worldloop.model.parallel (with each block's head exchange).
        self.token_sharding: TokenSharding | None = None
        init_linear_(self)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.head.head.weight)  # Wan initialises the output projection to zero

    # -- context ------------------------------------------------------------------------------------
    def context_kv(self, context_tokens: Tensor) -> list[KV]:
        """Text + interaction tokens (B, Lc, text_dim) → per-layer cross-attention (k, v) (B, Lc, H, Dh)."""
        context = self.text_embedding(context_tokens)
        return [cast(DiTBlock, block).cross_attn.project_context(context) for block in self.blocks]

    def time(self, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """timesteps (B, F) in [0, 1000] → e (B, F, dim), e6 (B, F, 6, dim)."""
        e = self.time_embedding(self._sinusoid(timesteps))
        return e, self.time_projection(e).unflatten(-1, (6, -1))

    def _sinusoid(self, timesteps: Tensor) -> Tensor:
        return sinusoidal_embedding(timesteps, self.cfg.freq_dim).to(self.patch_embedding.weight.dtype)

    def rope(self, frame_start: int, grid: tuple[int, int, int], device: torch.device) -> KV:
        """(cos, sin) tables (F·P, Dh/2) float32 on ``device`` of a token ``grid`` (F, h', w') whose
        frames start at ``frame_start`` — what :meth:`forward` computes itself when not given them."""
        positions = token_positions(frame_start, *grid)  # (F·P, 3)
        cos, sin = rope_cos_sin(positions, head_dim=self.cfg.head_dim, theta=self.cfg.rope_theta)
        return cos.to(device), sin.to(device)

    # -- the transformer ----------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        *,
        timesteps: Tensor,
        frame_start: int,
        context_kv: Sequence[KV],
        context_mask: Tensor,
        frame_context_mask: Tensor | None = None,
        camera_tokens: Tensor | None = None,
        attn_mask: Tensor | None = None,
        past: Sequence[KV | None] | None = None,
        past_mask: Tensor | None = None,
        rope: KV | None = None,
    ) -> tuple[Tensor, list[KV]]:
        """Predict the flow velocity of latent frames ``frame_start ..``.

        Args:
            x: (B, in_channels, F, h, w) — noisy latents ⊕ I2V mask ⊕ reference latents.
            timesteps: (B, F) per latent frame, in [0, 1000].
            context_kv: per layer (k, v) (B, Lc, H, Dh); context_mask (B, Lc) bool.
            frame_context_mask: (B, F, Lc) bool, the context each frame's tokens see (instruction
                turns, :meth:`WorldModel.frame_context_mask`); None: every token sees ``context_mask``.
            camera_tokens: (B, F·P, dim) from the camera encoder, added after patch embedding.
            attn_mask: (F·P, Lpast + F·P) bool, or None for full attention.
            past: per layer cached (k, v) (B, Lpast, H, Dh) or None.
            past_mask: (Lpast,) bool, which of ``past``'s tokens every query may see (a fixed-size
                past: the whole KV buffer with its empty slots masked, as compiled steps read it); the
                block's own tokens are always visible. Not together with ``attn_mask``.
            rope: (cos, sin) of the frame-major tokens from ``frame_start`` on (:meth:`rope`), on the
                device; a compiled step passes them so that no host work runs inside its graph.
        Returns:
            velocity (B, latent_channels, F, h, w) and this call's per-layer rotated (k, v).
        """
        cfg = self.cfg
        # 1. patch & position embedding
        tokens, grid = patchify(x, self.patch_embedding)  # (B, F·P, dim), grid (F, h', w')
        if camera_tokens is not None:
            tokens = tokens + camera_tokens.to(tokens.dtype)
        if past_mask is not None:  # one row for every query: past slots as given, own block visible
            if attn_mask is not None:
                raise ValueError("give attn_mask (training) or past_mask (a fixed-size past), not both")
            attn_mask = torch.cat([past_mask, past_mask.new_ones(tokens.shape[1])])[None]  # (1, Lp + L)
        # RoPE tables (F·P, Dh/2) of frame-major tokens; one host→device copy per forward, not one per
        # attention call (on an H200 those were 600 pageable transfers per 480p block, a quarter of it
        # host-bound). A compiled step brings its own, so that no host tensor enters its graph.
        cos, sin = self.rope(frame_start, grid, tokens.device) if rope is None else rope
        # Per-token cross-attention mask (instruction turns): each token sees its frame's context row.
        # Built once per forward over frame-major tokens, then sharded like the tokens themselves.
        token_mask = None
        if frame_context_mask is not None:  # (B, F, Lc) → (B, F·P, Lc)
            token_mask = frame_context_mask.repeat_interleave(tokens.shape[1] // grid[0], dim=1)
        sharding = self.token_sharding
        if sharding is not None:  # this worker's F·P/N tokens, with their RoPE rows
            tokens = sharding.shard(tokens, num_frames=grid[0], dim=1)
            cos = sharding.shard(cos, num_frames=grid[0], dim=0)
            sin = sharding.shard(sin, num_frames=grid[0], dim=0)
            if attn_mask is not None and past_mask is None:  # a past_mask row is the same for any order
                attn_mask = sharding.attention_mask(attn_mask, num_frames=grid[0])
            if token_mask is not None:  # the mask follows this worker's query tokens
                token_mask = sharding.shard(token_mask, num_frames=grid[0], dim=1)
        # 2. timestep modulation, one vector per latent frame
        e, e6 = self.time(timesteps)
        # 3. blocks
        new_kv: list[KV] = []
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            run = functools.partial(checkpoint, block, use_reentrant=False) if recompute else block
            tokens, k, v = run(
                tokens,
                e6=e6,
                cos=cos,
                sin=sin,
                context_kv=context_kv[i],
                context_mask=context_mask,
                token_context_mask=token_mask,
                past_kv=None if past is None else past[i],
                attn_mask=attn_mask,
            )
            new_kv.append((k, v))
        # 4. head and unpatchify
        out = self.head(tokens, e)  # (B, F·P, C·pt·ph·pw)
        if sharding is not None:
            out = sharding.gather(out, num_frames=grid[0], dim=1)
        return unpatchify(out, grid, cfg.patch_size, cfg.latent_channels), new_kv


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def set_gradient_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Turn per-block activation checkpointing on/off in every expert of ``module``; returns how many.

    Trades one extra forward per block for activations: at 480p and 81 frames a 1.3B expert needs
    tens of GB of activations without it. Gradients are unchanged (same ops, same order).
    """
    experts = [m for m in module.modules() if isinstance(m, ExpertTransformer)]
    for expert in experts:
        expert.gradient_checkpointing = enabled
    return len(experts)


def compile_blocks(module: nn.Module, **options: Any) -> int:
    """``torch.compile`` every DiT block of ``module`` in place (regional compilation); returns how many.

    The blocks of an expert are identical modules, so Dynamo compiles one graph and reuses it for all
    of them; the glue between blocks (cache bookkeeping, RoPE tables, the head) stays eager. What it
    buys is fusion of the per-token elementwise work (LayerNorm + AdaLN modulation in fp32, gates,
    GELU) that otherwise runs as dozens of separate memory-bound kernels per block. ``options`` go to
    ``nn.Module.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``).
    """
    from worldloop.model.arch.transformer_block import DiTBlock

    blocks = [m for m in module.modules() if isinstance(m, DiTBlock)]
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def set_attention_backend(module: nn.Module, backend: str) -> None:
    """Point every attention layer of ``module`` at ``backend`` (sdpa / sage / auto).

    ``sage`` applies to self-attention only: cross-attention always carries the padding mask of the
    text context (and, with instruction turns, one row per token), which SageAttention cannot take,
    so it stays on SDPA (it is a few % of the FLOPs:
    512 context tokens against tens of thousands of cached ones).
    """
    from worldloop.model.arch.attention import AttentionBackend
    from worldloop.model.arch.transformer_block import CrossAttention, SelfAttention

    chosen = AttentionBackend(backend)
    for m in module.modules():
        if isinstance(m, SelfAttention):
            m.backend = chosen
        elif isinstance(m, CrossAttention):
            m.backend = AttentionBackend.sdpa if chosen is AttentionBackend.sage else chosen
