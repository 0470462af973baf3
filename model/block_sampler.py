"""The one block sampler: denoise a block of latent frames against the cached past, then commit it.

Serving's :class:`~worldloop.model.rollout.Rollout` (and so InterBench, the quality ladder and training
samples) and the Self-Forcing rollout of stages 3–4 (:mod:`worldloop.model.distill.self_forcing`) both
call :func:`denoise_block` with a :class:`~worldloop.model.diffusion.sampler.Scheduler`. Their only
difference is the *gradient policy*: serving runs every step without gradient; training stops at a
random exit step, which alone records a graph. ``tests/model/test_block_sampler.py`` checks that, with
the same weights, noise and inputs, the training rollout under ``no_grad`` equals ``Rollout`` bit for bit.
A rollout with ``compile="step"`` runs each step — forward and scheduler update — as one compiled
callable (:mod:`worldloop.model.compiled_step`), with the same noise draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from worldloop.model.arch.kv_cache import KVCache
from worldloop.model.arch.world_model import WorldModel
from worldloop.model.diffusion.sampler import Scheduler

if TYPE_CHECKING:
    from worldloop.model.compiled_step import CompiledStep


@dataclass(frozen=True)
class BlockNoise:
    """Gaussian noise for blocks, drawn from ``generator`` (None: torch's global one) in float32 on the
    host and cast to the block's dtype and device.

    Data parallelism: each draw covers the ``rows`` samples of the global batch and this process keeps
    rows ``first_row ..``, so W processes with batch B draw exactly what one process with batch W·B draws.
    """

    generator: torch.Generator | None = None
    rows: int | None = None
    first_row: int = 0

    def __call__(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        b = shape[0]
        rows = b if self.rows is None else self.rows
        if not 0 <= self.first_row <= rows - b:
            raise ValueError(
                f"rows {self.first_row} .. {self.first_row + b - 1} are not in a batch of {rows}"
            )
        draw = torch.randn((rows, *shape[1:]), generator=self.generator)
        return draw[self.first_row : self.first_row + b].to(like)


def denoise_block(
    model: WorldModel,
    *,
    scheduler: Scheduler,
    noise: Callable[[], Tensor],
    cond: Tensor,
    camera: Tensor,
    block_index: int,
    cache: KVCache,
    camera_tokens: Tensor | None = None,
    exit_step: int | None = None,
    grad: bool = False,
    compiled: CompiledStep | None = None,
) -> Tensor:
    """Clean latents (B, C, f, h, w) of block ``block_index``, from ``noise()`` through the scheduler's
    steps ``0 .. exit_step`` (default: all). Nothing is written to ``cache``: commit the block with
    :meth:`WorldModel.commit_block`.

    Args:
        noise: draws a block of noise: the start, then one per re-noising step.
        cond: (B, stride + C, f, h, w) I2V condition; camera: (B, f, 6·stride, H, W) grouped rays.
        camera_tokens: ``model.encode_camera(camera)`` when the caller has it.
        exit_step: the step whose x0 estimate is the block (Self-Forcing's random exit).
        grad: the exit step records a graph (training); every other step runs without gradient.
        compiled: run each step (forward + scheduler update) as this compiled callable (serving);
            the same noise draws, so the same block up to the compiled kernels' rounding.
    """
    last = len(scheduler) - 1 if exit_step is None else exit_step
    if not 0 <= last < len(scheduler):
        raise ValueError(f"exit step {exit_step} is not one of the scheduler's {len(scheduler)} steps")
    if compiled is not None and (grad or exit_step is not None):
        raise ValueError(
            "a compiled step runs every step without gradient (serving); training's exit "
            "steps and gradients denoise eagerly"
        )
    start = noise()
    x = scheduler.initial(start)
    b, f = x.shape[0], x.shape[2]
    if camera_tokens is None:
        with torch.set_grad_enabled(grad):
            camera_tokens = model.encode_camera(camera)
    seen = model.condition(cond, camera)  # the I2V channels every step reads (i2v_warp: once per block)
    for i, t in enumerate(scheduler.timesteps[: last + 1]):
        t_frames = torch.full((b, f), float(t), dtype=start.dtype, device=x.device)
        if compiled is not None:  # forward + update in one call; zeros where the step takes no noise
            x, _ = compiled.step(
                x,
                scheduler=scheduler,
                timesteps=t_frames,
                t_next=torch.full((b, f), scheduler.next_timestep(i), device=x.device),
                noise=noise() if scheduler.renoises and i < last else torch.zeros_like(start),
                cond=seen,
                camera_tokens=camera_tokens,
                block_index=block_index,
                cache=cache,
                expert=model.expert_for(t),
            )
            continue
        with torch.set_grad_enabled(grad and i == last):
            v = model.forward_step(
                x.to(start.dtype),
                timesteps=t_frames,
                cond=cond,
                camera=camera,
                block_index=block_index,
                cache=cache,
                expert=model.expert_for(t),
                camera_tokens=camera_tokens,
                seen_cond=seen,
            )
            fresh = noise() if scheduler.renoises and i < last else None
            x, _ = scheduler.step(i, x, v, t_frames, fresh)
    return x.to(start.dtype)  # after the exit step: its clean estimate
