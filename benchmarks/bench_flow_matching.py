"""Flow-matching conversions and samplers on CPU (numbers measured in one run, never asserted).

* conversion throughput (add_noise + x0_from_velocity) on one 480p Wan2.x latent clip, per-sample vs
  per-frame sigmas and float32 vs bfloat16;
* sampler overhead: wall time per step of ``few_step_sample`` relative to ``euler_sample`` with a
  trivial denoiser (what the sampler itself costs, model excluded);
* Euler accuracy vs steps on Gaussian data with its analytic velocity (variance error);
* the 4-step timestep lists (uniform and expert-aligned) at shift 5, boundary 0.9.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from worldloop.model.diffusion import (
    add_noise,
    euler_sample,
    euler_timesteps,
    expand_sigma,
    few_step_sample,
    few_step_timesteps,
    timesteps_to_sigmas,
    velocity_target,
    x0_from_velocity,
)

LATENT = (1, 16, 21, 60, 104)  # 81 frames of 480×832 video after the ×4/×8 VAE


def _seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _conversion_rows(repeats: int) -> list[tuple[str, float]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x0 = torch.randn(LATENT, generator=g).to(dtype)
        noise = torch.randn(LATENT, generator=g).to(dtype)
        for name, sigma in (("per-sample", torch.rand(1)), ("per-frame", torch.rand(1, LATENT[2]))):

            def convert(x0: Tensor = x0, noise: Tensor = noise, sigma: Tensor = sigma) -> Tensor:
                x_t = add_noise(x0, noise, sigma)
                return x0_from_velocity(x_t, velocity_target(x0, noise), sigma)

            rows.append((f"{str(dtype)[6:]:8s} {name:10s}", x0.numel() / _seconds(convert, repeats) / 1e6))
    return rows


def _gaussian_velocity(data_std: float) -> Callable[[Tensor, Tensor], Tensor]:
    def velocity(x_t: Tensor, t: Tensor) -> Tensor:
        s = expand_sigma(timesteps_to_sigmas(t), x_t)
        var = data_std**2
        return (s - (1 - s) * var) / ((1 - s) ** 2 * var + s**2) * x_t

    return velocity


def main(repeats: int = 5) -> None:
    print("conversion throughput (add_noise + x0_from_velocity), Melem/s, latent", LATENT)
    for name, rate in _conversion_rows(repeats):
        print(f"  {name} {rate:8.1f}")

    noise = torch.randn(1, 16, 5, 32, 32, generator=torch.Generator().manual_seed(1))
    steps = few_step_timesteps(4, shift=5.0, boundary=0.9)
    euler_s = _seconds(lambda: euler_sample(lambda x, t: x, noise, steps), repeats)
    few_s = _seconds(lambda: few_step_sample(lambda x, t: x, noise, steps), repeats)
    print(f"sampler overhead, few-step / Euler (4 steps, identity denoiser): {few_s / euler_s:.2f}x")

    data_std = 0.5
    print(f"Euler on N(0, {data_std}²) data, analytic velocity: |var/target - 1| by steps (shift 1 / 5)")
    for n in (4, 8, 16, 50, 100):
        errs = []
        for shift in (1.0, 5.0):
            out = euler_sample(_gaussian_velocity(data_std), noise, euler_timesteps(n, shift=shift))
            errs.append(abs((out / noise).mean().item() ** 2 / data_std**2 - 1))
        print(f"  {n:4d} steps  {errs[0]:.4f} / {errs[1]:.4f}")

    print("4 steps, shift 5, uniform:       ", [round(t, 1) for t in few_step_timesteps(4, shift=5.0)])
    print("4 steps, shift 5, aligned (2, 2):", [round(t, 1) for t in steps])


if __name__ == "__main__":
    main()
