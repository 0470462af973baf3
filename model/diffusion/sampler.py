"""Samplers over a velocity denoiser: Euler ODE (teacher) and few-step re-noising (distilled student).

A :data:`Denoiser` maps ``(x_t (B, C, F, H, W), t (B,) or (B, F))`` to the predicted velocity
``ε − x0``; these samplers pass ``t`` as ``(B,)`` float32 timesteps in [0, 1000]. Causal rollouts that
need per-frame timesteps call the conversions in :mod:`.flow_matching` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from worldloop.model.diffusion.flow_matching import add_noise, x0_from_velocity
from worldloop.model.diffusion.schedule import NUM_TRAIN_TIMESTEPS, timesteps_to_sigmas

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``(x_t (B, C, F, H, W), t (B,) or (B, F) in [0, 1000]) -> velocity (B, C, F, H, W)``."""


def _check_timesteps(timesteps: Sequence[float]) -> list[float]:
    ts = [float(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty; build one with few_step_timesteps or euler_timesteps")
    if not all(0 < t <= NUM_TRAIN_TIMESTEPS for t in ts):
        raise ValueError(f"timesteps must lie in (0, {NUM_TRAIN_TIMESTEPS}], got {ts}")
    if any(a <= b for a, b in zip(ts[:-1], ts[1:], strict=True)):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts}")
    return ts


def _batch_timestep(t: float, like: Tensor) -> Tensor:
    return torch.full((like.shape[0],), t, dtype=torch.float32, device=like.device)  # (B,)


def euler_sample(denoise: Denoiser, noise: Tensor, timesteps: Sequence[float]) -> Tensor:
    """Integrate the probability-flow ODE ``dx/dσ = v`` from ``noise`` (σ = t₀/1000) down to σ = 0.

    Args:
        denoise: velocity predictor.
        noise: ``(B, C, F, H, W)`` starting latent (pure noise when ``timesteps[0] == 1000``).
        timesteps: strictly decreasing, in (0, 1000]; the last step goes to σ = 0.

    Returns:
        ``(B, C, F, H, W)`` clean latent, in ``noise``'s dtype.
    """
    ts = _check_timesteps(timesteps)
    sigmas = [timesteps_to_sigmas(t) for t in ts] + [0.0]
    # Accumulate in float32 at least: many small steps in bf16 drift.
    x = noise.to(torch.promote_types(noise.dtype, torch.float32))
    for i, t in enumerate(ts):
        v = denoise(x.to(noise.dtype), _batch_timestep(t, x))
        x = x + (sigmas[i + 1] - sigmas[i]) * v.to(x.dtype)
    return x.to(noise.dtype)


def few_step_sample(
    denoise: Denoiser,
    noise: Tensor,
    timesteps: Sequence[float],
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Consistency / DMD-style sampling (Self-Forcing inference).

    At each ``t_i`` predict ``x0`` from the velocity, then re-noise it to ``t_{i+1}`` with *fresh*
    Gaussian noise; the last step returns the ``x0`` prediction. Unlike :func:`euler_sample`, the
    student was trained to jump straight to ``x0`` from each of these timesteps.

    Args:
        denoise: velocity predictor.
        noise: ``(B, C, F, H, W)`` latent at ``timesteps[0]``.
        timesteps: strictly decreasing, in (0, 1000], e.g. from :func:`few_step_timesteps`.
        generator: source of the re-noising noise (on ``noise``'s device).

    Returns:
        ``(B, C, F, H, W)`` clean latent, in ``noise``'s dtype.
    """
    ts = _check_timesteps(timesteps)
    x = noise
    x0 = noise
    for i, t in enumerate(ts):
        t_batch = _batch_timestep(t, x)
        x0 = x0_from_velocity(x, denoise(x, t_batch), timesteps_to_sigmas(t_batch))
        if i + 1 < len(ts):
            fresh = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            x = add_noise(x0, fresh, timesteps_to_sigmas(_batch_timestep(ts[i + 1], x0)))
    return x0
