"""Schedulers over a velocity denoiser — the one step rule every denoising loop uses — and the whole-clip
samplers built on them: Euler ODE (teacher) and few-step re-noising (distilled student).

A :data:`Denoiser` maps ``(x_t (B, C, F, H, W), t (B,) or (B, F))`` to the predicted velocity
``ε − x0``. A scheduler owns a timestep list and turns the velocity at step ``i`` into the latent at
step ``i + 1`` (and the clean estimate ``x0``). Block-by-block generation
(:mod:`worldloop.model.block_sampler`, used by serving's ``Rollout`` and by Self-Forcing training)
runs the same ``step`` as the samplers here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from worldloop.model.diffusion.flow_matching import add_noise, expand_sigma, x0_from_velocity
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


class Scheduler(ABC):
    """A strictly decreasing timestep list in (0, 1000] and the rule from one step to the next."""

    renoises = False  # True: a step past the first needs fresh noise (see :meth:`step`)

    def __init__(self, timesteps: Sequence[float]) -> None:
        self.timesteps = _check_timesteps(timesteps)

    def __len__(self) -> int:
        return len(self.timesteps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[round(t, 3) for t in self.timesteps]})"

    def initial(self, noise: Tensor) -> Tensor:
        """The state the loop starts from (``noise`` itself, or a wider accumulator)."""
        return noise

    @abstractmethod
    def step(
        self, i: int, x: Tensor, velocity: Tensor, t: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """From ``x`` at ``timesteps[i]`` (``t``: that timestep as the tensor the denoiser was given,
        (B,) or (B, F)) and its predicted ``velocity``: ``(x at timesteps[i + 1], x0 estimate)``.
        After the last step the first element is the clean latent."""

    def next_timestep(self, i: int) -> float:
        """The timestep after step ``i``: 0 (clean) after the last."""
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0.0

    @abstractmethod
    def update(self, x: Tensor, velocity: Tensor, t: Tensor, t_next: Tensor, noise: Tensor) -> Tensor:
        """:meth:`step`'s next state from tensors alone, for a step compiled once for every step index:
        ``t`` as :meth:`step` takes it, ``t_next`` (float32, ``t``'s shape) the next timestep
        (:meth:`next_timestep`, 0 after the last) and ``noise`` the fresh noise (zeros where :meth:`step`
        takes none). No branch on the step index, so one traced graph serves every step."""


class FewStepScheduler(Scheduler):
    """Consistency / DMD-style sampling (Self-Forcing): at each ``t_i`` predict ``x0`` from the velocity,
    then re-noise it to ``t_{i+1}`` with *fresh* Gaussian ``noise``; the last step returns ``x0``.

    A step given no ``noise`` exits there and returns ``x0`` (Self-Forcing's random exit step)."""

    renoises = True

    def step(
        self, i: int, x: Tensor, velocity: Tensor, t: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        x0 = x0_from_velocity(x, velocity, timesteps_to_sigmas(t))
        if i + 1 == len(self.timesteps) or noise is None:
            return x0, x0
        sigma = timesteps_to_sigmas(torch.full(t.shape, self.timesteps[i + 1], device=x.device))
        return add_noise(x0, noise, sigma), x0

    def update(self, x: Tensor, velocity: Tensor, t: Tensor, t_next: Tensor, noise: Tensor) -> Tensor:
        # After the last step σ_next = 0 and the noise is zeros: (1 − 0)·x0 + 0·0 is x0 exactly.
        x0 = x0_from_velocity(x, velocity, timesteps_to_sigmas(t))
        return add_noise(x0, noise, timesteps_to_sigmas(t_next))


class EulerScheduler(Scheduler):
    """The probability-flow ODE ``dx/dσ = v`` integrated with Euler steps; the last step goes to σ = 0.

    The state is accumulated in float32 at least (many small steps in bf16 drift); callers cast it to
    the denoiser's dtype."""

    def __init__(self, timesteps: Sequence[float]) -> None:
        super().__init__(timesteps)
        self.sigmas = [timesteps_to_sigmas(t) for t in self.timesteps] + [0.0]

    def initial(self, noise: Tensor) -> Tensor:
        return noise.to(torch.promote_types(noise.dtype, torch.float32))

    def step(
        self, i: int, x: Tensor, velocity: Tensor, t: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        x0 = x0_from_velocity(x, velocity, timesteps_to_sigmas(t))
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * velocity.to(x.dtype), x0

    def update(self, x: Tensor, velocity: Tensor, t: Tensor, t_next: Tensor, noise: Tensor) -> Tensor:
        # σ from tensors in float32: may differ from step()'s host (float64) difference in the last ulp.
        d_sigma = timesteps_to_sigmas(t_next.float()) - timesteps_to_sigmas(t.float())  # (B,) or (B, F)
        return x + expand_sigma(d_sigma, x).to(x.dtype) * velocity.to(x.dtype)


def sample(
    denoise: Denoiser,
    noise: Tensor,
    scheduler: Scheduler,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run ``scheduler`` from ``noise`` (B, C, F, H, W) at ``timesteps[0]`` with the denoiser given
    (B,) float32 timesteps; ``generator`` draws a re-noising scheduler's fresh noise.

    Returns the clean latent, in ``noise``'s dtype."""
    x = scheduler.initial(noise)
    for i, t in enumerate(scheduler.timesteps):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)  # (B,)
        v = denoise(x.to(noise.dtype), t_batch)
        fresh = None
        if scheduler.renoises and i + 1 < len(scheduler):
            fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x, _ = scheduler.step(i, x, v, t_batch, fresh)
    return x.to(noise.dtype)


def euler_sample(denoise: Denoiser, noise: Tensor, timesteps: Sequence[float]) -> Tensor:
    """Integrate the probability-flow ODE from ``noise`` (σ = t₀/1000) down to σ = 0
    (:class:`EulerScheduler`); pure noise when ``timesteps[0] == 1000``."""
    return sample(denoise, noise, EulerScheduler(timesteps))


def few_step_sample(
    denoise: Denoiser,
    noise: Tensor,
    timesteps: Sequence[float],
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Few-step re-noising sampling (:class:`FewStepScheduler`): unlike :func:`euler_sample`, the
    student was trained to jump straight to ``x0`` from each of these timesteps."""
    return sample(denoise, noise, FewStepScheduler(timesteps), generator=generator)
