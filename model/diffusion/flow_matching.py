"""Rectified-flow conversions with per-sample or per-frame sigmas (DESIGN.md §5.5).

Wan2.x / Self-Forcing conventions: the forward process is the straight line
``x_t = (1 − σ)·x0 + σ·ε`` from data (σ = 0) to noise (σ = 1), and the network predicts the
velocity ``v = dx_t/dσ = ε − x0``. Given any two of (x_t, x0, ε, v) at a known σ the others follow;
these functions are those identities, nothing more.

Latents are channels-first video ``(B, C, F, H, W)``. A sigma is either one per sample ``(B,)`` or
one per latent frame ``(B, F)`` — the latter is what diffusion forcing and Self-Forcing use, where
each frame (or block of frames) sits at its own noise level. A 0-d sigma applies to the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

FRAME_DIM = 2  # time axis of (B, C, F, H, W) latents


def expand_sigma(sigma: Tensor, like: Tensor) -> Tensor:
    """Reshape ``sigma`` so it broadcasts against ``like``.

    Args:
        sigma: ``()``, ``(B,)`` or ``(B, F)``.
        like: ``(B, C, F, H, W)`` (any rank ≥ 2 for ``(B,)``/``()`` sigmas).

    Returns:
        ``()``, ``(B, 1, …, 1)`` or ``(B, 1, F, 1, 1)`` on ``like``'s device; the dtype is kept so
        callers decide the compute precision.
    """
    sigma = sigma.to(device=like.device)
    if sigma.ndim == 0:
        return sigma
    if sigma.shape[0] != like.shape[0]:
        raise ValueError(
            f"sigma batch {sigma.shape[0]} does not match tensor batch {like.shape[0]}; "
            "pass one sigma per sample (B,) or per frame (B, F)"
        )
    if sigma.ndim == 1:
        return sigma.reshape(sigma.shape[0], *([1] * (like.ndim - 1)))
    if sigma.ndim == 2:
        if like.ndim <= FRAME_DIM or like.shape[FRAME_DIM] != sigma.shape[1]:
            raise ValueError(
                f"per-frame sigma {tuple(sigma.shape)} needs a (B, C, F, H, W) tensor with "
                f"F = {sigma.shape[1]}; got {tuple(like.shape)}"
            )
        trailing = [1] * (like.ndim - FRAME_DIM - 1)
        return sigma.reshape(sigma.shape[0], 1, sigma.shape[1], *trailing)
    raise ValueError(f"sigma must have shape (), (B,) or (B, F); got {tuple(sigma.shape)}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    # bf16/fp16 latents lose the x0 = x_t − σ·v cancellation at small σ, so the identities are
    # evaluated in at least float32 and cast back (Self-Forcing does the same in float64).
    return torch.promote_types(x.dtype, torch.float32)


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """``x_t = (1 − σ)·x0 + σ·ε``. ``x0``/``noise``: ``(B, C, F, H, W)``; ``sigma``: ``(B,)``/``(B, F)``."""
    dtype = _compute_dtype(x0)
    s = expand_sigma(sigma, x0).to(dtype)
    return ((1 - s) * x0.to(dtype) + s * noise.to(dtype)).to(x0.dtype)


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Training target ``v = ε − x0`` (independent of σ on the straight path), same shape as ``x0``."""
    return noise - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """Clean latent from a velocity prediction: ``x0 = x_t − σ·v``."""
    dtype = _compute_dtype(x_t)
    s = expand_sigma(sigma, x_t).to(dtype)
    return (x_t.to(dtype) - s * v.to(dtype)).to(x_t.dtype)


def noise_from_velocity(x_t: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """Noise from a velocity prediction: ``ε = x_t + (1 − σ)·v``."""
    dtype = _compute_dtype(x_t)
    s = expand_sigma(sigma, x_t).to(dtype)
    return (x_t.to(dtype) + (1 - s) * v.to(dtype)).to(x_t.dtype)


def velocity_from_x0(x_t: Tensor, x0: Tensor, sigma: Tensor, *, min_sigma: float = 1e-6) -> Tensor:
    """Velocity implied by a clean-latent prediction: ``v = (x_t − x0)/σ``.

    σ is clamped to ``min_sigma``: at σ = 0 any velocity is consistent (x_t = x0), and the clamp keeps
    the result finite so that :func:`x0_from_velocity` still returns ``x_t`` there.
    """
    dtype = _compute_dtype(x_t)
    s = expand_sigma(sigma, x_t).to(dtype).clamp_min(min_sigma)
    return ((x_t.to(dtype) - x0.to(dtype)) / s).to(x_t.dtype)
