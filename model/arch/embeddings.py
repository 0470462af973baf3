"""Timestep, text and patch embeddings of a Wan2.x DiT (names match Wan's state-dict keys)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Wan's sinusoid: [cos, sin] of ``t · 10000^(-i/half)``; (...,) → (..., dim), float32."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timesteps.device) / half)
    angle = timesteps.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1).float()


class TimeEmbedding(nn.Module):
    """t → (e, e6): the conditioning vector and its six modulation chunks (AdaLN-style)."""

    def __init__(self, freq_dim: int, dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))

    def forward(self, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """timesteps (B, F) → e (B, F, dim), e6 (B, F, 6, dim)."""
        e = self.time_embedding(sinusoidal_embedding(timesteps, self.freq_dim))
        e6 = self.time_projection(e).unflatten(-1, (6, -1))
        return e, e6


def patchify(x: Tensor, proj: nn.Conv3d) -> tuple[Tensor, tuple[int, int, int]]:
    """(B, C, F, H, W) → tokens (B, F·h·w, dim) frame-major, and the token grid (F, h, w)."""
    y = proj(x)  # (B, dim, F, h, w)
    grid = (y.shape[2], y.shape[3], y.shape[4])
    return y.flatten(2).transpose(1, 2), grid


def unpatchify(
    tokens: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int
) -> Tensor:
    """(B, F·h·w, C·pt·ph·pw) → (B, C, F·pt, h·ph, w·pw) — inverse of the patch embedding layout."""
    f, h, w = grid
    pt, ph, pw = patch
    b = tokens.shape[0]
    x = tokens.reshape(b, f, h, w, pt, ph, pw, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, F, pt, h, ph, w, pw)
    return x.reshape(b, channels, f * pt, h * ph, w * pw)


def text_projection(text_dim: int, dim: int) -> nn.Sequential:
    """Wan's text embedding MLP (keys ``text_embedding.0`` and ``.2``)."""
    return nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))


def init_linear_(module: nn.Module) -> None:
    """Xavier-uniform weights, zero biases for every Linear (Wan's init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def modulation_parameter(chunks: int, dim: int) -> nn.Parameter:
    """Per-block learnt offset added to the shared time modulation, as in Wan (scaled 1/√dim)."""
    return nn.Parameter(torch.randn(1, chunks, dim) / math.sqrt(dim))
