"""Interaction extractor (DESIGN.md §5.3): instruction tokens → interaction embeddings.

A small set of learnt queries attends over the instruction's token features and emits
``num_interaction_tokens`` embeddings in the text encoder's space. They are appended to the scene text
tokens to form the cross-attention context, so the model can tell *what should happen* ("open the door")
apart from *what the scene is*. With no instruction the slots are masked out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from worldloop.model.config import ModelConfig


class InteractionExtractor(nn.Module):
    """(B, L, text_dim) instruction tokens + mask → (B, n, text_dim) interaction tokens + mask."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.text_dim
        self.num_tokens = cfg.num_interaction_tokens
        self.num_heads = max(1, d // 64) if d % 64 == 0 else 1
        self.queries = nn.Parameter(torch.randn(self.num_tokens, d) / math.sqrt(d))
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, self.num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, tokens: Tensor | None, mask: Tensor | None, *, batch: int) -> tuple[Tensor, Tensor]:
        """Returns interaction tokens (B, n, text_dim) and their mask (B, n) (False where no instruction)."""
        device = self.queries.device
        dtype = self.queries.dtype
        if tokens is None or mask is None:
            empty = torch.zeros(batch, self.num_tokens, self.queries.shape[1], device=device, dtype=dtype)
            return empty, torch.zeros(batch, self.num_tokens, dtype=torch.bool, device=device)
        has = mask.any(dim=1)  # (B,)
        safe = mask.clone()
        safe[~has, 0] = True  # an empty instruction row must still softmax over something
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        y, _ = self.attn(q, self.norm(tokens), self.norm(tokens), key_padding_mask=~safe, need_weights=False)
        y = y + self.mlp(y)
        return y, has[:, None].expand(-1, self.num_tokens)
