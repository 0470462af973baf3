"""Noise schedules: timestep shift, training sigmas, few-step and Euler timestep lists, MoE routing.

Conventions (Wan2.x): timesteps are ``t = 1000·σ`` (floats, not integer bins), and the resolution
shift warps a uniform ``u ∈ [0, 1]`` to ``σ = shift·u / (1 + (shift − 1)·u)``, which spends more of
the schedule at high noise for large videos. The Wan2.2 MoE routes each denoising step to the
high-noise expert when ``t ≥ boundary·1000`` and to the low-noise expert otherwise (boundary 0.900
for I2V, DESIGN.md §5.1).
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar, overload

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
HIGH_NOISE_EXPERT = 0
LOW_NOISE_EXPERT = 1

SigmaLike = TypeVar("SigmaLike", float, Tensor)


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ValueError(f"shift must be > 0 (1 = no shift; Wan2.x uses 3–5 for video), got {shift}")


def _check_boundary(boundary: float) -> None:
    if not 0 < boundary < 1:
        raise ValueError(
            f"boundary must lie in (0, 1) as a fraction of {NUM_TRAIN_TIMESTEPS}, got {boundary}"
        )


def _check_num_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def shift_sigma(sigma: SigmaLike, shift: float) -> SigmaLike:
    """``σ' = shift·σ / (1 + (shift − 1)·σ)``; monotone on [0, 1] with fixed points 0 and 1."""
    _check_shift(shift)
    return shift * sigma / (1 + (shift - 1) * sigma)


def unshift_sigma(sigma: SigmaLike, shift: float) -> SigmaLike:
    """Inverse of :func:`shift_sigma`: ``σ = σ' / (shift − (shift − 1)·σ')``."""
    _check_shift(shift)
    return sigma / (shift - (shift - 1) * sigma)


def sigmas_to_timesteps(sigmas: SigmaLike) -> SigmaLike:
    """``t = 1000·σ``."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def timesteps_to_sigmas(t: SigmaLike) -> SigmaLike:
    """``σ = t / 1000``."""
    return t / NUM_TRAIN_TIMESTEPS


def sample_training_sigmas(
    batch: int,
    num_frames: int,
    *,
    shift: float,
    per_frame: bool,
    generator: torch.Generator | None = None,
    distribution: Literal["uniform", "logit_normal"] = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    frames_per_block: int = 1,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw training noise levels, shape ``(B, F)`` float32, values in [0, 1).

    ``u`` is uniform (or logit-normal, SD3 §3.1) and then shifted. With ``per_frame=False`` every
    frame of a sample shares one σ (plain video diffusion); with ``per_frame=True`` each block of
    ``frames_per_block`` latent frames gets its own σ (diffusion forcing; Self-Forcing uses blocks).
    """
    if batch < 1 or num_frames < 1:
        raise ValueError(f"batch and num_frames must be >= 1, got batch={batch}, num_frames={num_frames}")
    if frames_per_block < 1:
        raise ValueError(f"frames_per_block must be >= 1, got {frames_per_block}")
    _check_shift(shift)
    num_draws = math.ceil(num_frames / frames_per_block) if per_frame else 1
    shape = (batch, num_draws)
    if distribution == "uniform":
        u = torch.rand(shape, generator=generator, device=device)
    elif distribution == "logit_normal":
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        z = torch.randn(shape, generator=generator, device=device)
        u = torch.sigmoid(logit_mean + logit_std * z)
    else:
        raise ValueError(f"distribution must be 'uniform' or 'logit_normal', got {distribution!r}")
    sigma = shift_sigma(u, shift)
    if not per_frame:
        return sigma.expand(batch, num_frames).contiguous()
    return sigma.repeat_interleave(frames_per_block, dim=1)[:, :num_frames].contiguous()


def euler_timesteps(num_steps: int, *, shift: float) -> list[float]:
    """Many-step teacher grid: ``linspace(1, 0, n + 1)[:-1]`` shifted, times 1000.

    Starts at 1000 and ends above 0; the sampler's final step integrates down to σ = 0.
    """
    _check_num_steps(num_steps)
    _check_shift(shift)
    return [sigmas_to_timesteps(shift_sigma(1 - i / num_steps, shift)) for i in range(num_steps)]


def few_step_timesteps(
    num_steps: int,
    *,
    shift: float,
    boundary: float | None = None,
    steps_per_expert: tuple[int, int] | None = None,
) -> list[float]:
    """Timesteps at which a distilled few-step student is evaluated, strictly decreasing from 1000.

    Without ``boundary`` this is the uniform grid of :func:`euler_timesteps` (4 steps, shift 5 →
    ≈[1000, 937.5, 833.3, 625.0]). With ``boundary`` the list is *expert-aligned*: exactly
    ``n_high`` steps have ``t ≥ boundary·1000`` (high-noise expert) and ``n_low`` have ``t <`` it.
    ``steps_per_expert`` defaults to an even split, the extra step going to the high-noise expert.

    Construction: with ``r_i = i / n`` the step's position and ``u_b`` the unshifted boundary
    (``shift(u_b) = boundary``), ``u_i = g(r_i)`` where ``g`` is the piecewise-linear decreasing map
    with ``g(0) = 1``, ``g(1) = 0`` and ``g((n_high − ½)/n) = u_b``: the boundary falls halfway (in
    step index) between the last high-noise step and the first low-noise step. Then
    ``t_i = 1000·shift(u_i)``. When the uniform grid already splits as requested, ``g`` only moves
    steps within their expert's range.
    """
    _check_num_steps(num_steps)
    _check_shift(shift)
    if boundary is None:
        if steps_per_expert is not None:
            raise ValueError("steps_per_expert needs a boundary; pass boundary=0.9 (Wan2.2 I2V)")
        return euler_timesteps(num_steps, shift=shift)
    _check_boundary(boundary)
    n_high, n_low = steps_per_expert or (num_steps - num_steps // 2, num_steps // 2)
    if n_high + n_low != num_steps or n_high < 1 or n_low < 0:
        raise ValueError(
            f"steps_per_expert={steps_per_expert} must be (n_high >= 1, n_low >= 0) summing to "
            f"num_steps={num_steps}; the first step (t=1000) always belongs to the high-noise expert"
        )
    u_b = unshift_sigma(boundary, shift)
    r_b = (n_high - 0.5) / num_steps
    timesteps = []
    for i in range(num_steps):
        r = i / num_steps
        u = 1 - r / r_b * (1 - u_b) if r < r_b else u_b * (1 - r) / (1 - r_b)
        timesteps.append(sigmas_to_timesteps(shift_sigma(u, shift)))
    return timesteps


@overload
def expert_for_timestep(t: float, boundary: float) -> int: ...
@overload
def expert_for_timestep(t: Tensor, boundary: float) -> Tensor: ...
def expert_for_timestep(t: float | Tensor, boundary: float) -> int | Tensor:
    """0 (high-noise expert) when ``t ≥ boundary·1000``, else 1 (low-noise). Tensors map elementwise."""
    _check_boundary(boundary)
    threshold = sigmas_to_timesteps(boundary)
    if isinstance(t, Tensor):
        return torch.where(t >= threshold, HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT).to(torch.long)
    return HIGH_NOISE_EXPERT if t >= threshold else LOW_NOISE_EXPERT
