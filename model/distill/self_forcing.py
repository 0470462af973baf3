"""Self-Forcing rollout: the causal student generates a clip block by block from its own outputs, with
the same KV cache (sink + window) and few-step expert-aligned schedule the serving ``Rollout`` uses.

Training only differs in where gradients flow (Self-Forcing, Huang et al. 2025): for each block a
random *exit step* ``s`` is drawn; steps before it run without gradient, step ``s`` runs with
gradient and its x0 prediction is the block's output; the clean t = 0 pass that writes the block's
K/V into the cache runs without gradient (the past is detached). Cross-attention K/V are computed once
per rollout, *with* gradient when grad mode is on: they depend on the prompt, not on the past, so the
exit steps train the text embedding, the cross-attention K/V projections and the interaction
extractor too (only the exit steps record a graph through them; the other passes run under no_grad).

Data parallelism (DESIGN.md §6): the random choices that decide *which modules run* — every block's exit
step — come from ``generator`` alone, so ranks seeded alike run the same sequence of expert calls (ZeRO-3
gathers each module's parameters collectively, and ZeRO-2 reduces gradients in hook order: both need
that). The noise of rank ``r`` is rows ``first_row ..`` of a draw for the whole ``global_batch``, so W
processes with batch B draw exactly what one process with batch W·B draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from worldloop.model.arch.world_model import Conditioning, WorldModel, i2v_condition
from worldloop.model.diffusion.flow_matching import add_noise, x0_from_velocity
from worldloop.model.diffusion.schedule import timesteps_to_sigmas


@dataclass(frozen=True)
class SelfForcingRollout:
    video_latents: Tensor  # (B, C, T, h, w): frame 0 = reference, then generated blocks (with grad)
    exit_steps: list[int]  # the exit step drawn for each block


def self_forcing_rollout(
    student: WorldModel,
    *,
    reference: Tensor,
    camera: Tensor,
    conditioning: Conditioning,
    num_blocks: int,
    timesteps: Sequence[float],
    generator: torch.Generator,
    height: int,
    width: int,
    context: Tensor | None = None,
    first_generated: int = 1,
    grad_from: int = 1,
    global_batch: int | None = None,
    first_row: int = 0,
) -> SelfForcingRollout:
    """Generate ``num_blocks`` blocks after the reference latent frame.

    Args:
        reference: (B, C, 1, h, w) clean latent of the first frame.
        camera: (B, T, 6·stride, H, W) grouped Plücker rays for all T = 1 + num_blocks·block_frames.
        timesteps: the student's few-step list, strictly decreasing from 1000.
        context: (B, C, ≥ T', h, w) real latents; blocks ``1 .. first_generated - 1`` are taken from
            it instead of generated (teacher forcing, stage 4).
        grad_from: generated blocks before this one run entirely without gradient (long rollouts
            keep the graph only for the window being aligned).
        global_batch: rows of every noise draw (default: this batch's B); this batch takes rows
            ``first_row .. first_row + B`` of it (data-parallel rank r of W: ``W·B`` and ``r·B``).
    """
    cfg = student.cfg
    f, stride = cfg.causal.block_frames, cfg.vae.temporal_stride
    b, c, _, h, w = reference.shape
    total = 1 + num_blocks * f
    rows = b if global_batch is None else global_batch
    if not 0 <= first_row <= rows - b:
        raise ValueError(f"rows {first_row} .. {first_row + b - 1} are not in a global batch of {rows}")

    def noise() -> Tensor:  # (B, C, f, h, w): this batch's rows of a global-batch draw
        return torch.randn((rows, c, f, h, w), generator=generator)[first_row : first_row + b].to(reference)

    if camera.shape[1] != total:
        raise ValueError(f"camera has {camera.shape[1]} latent frames, the rollout needs {total}")
    cache = student.new_cache(batch=b, height=height, width=width, dtype=student.dtype)
    with torch.set_grad_enabled(torch.is_grad_enabled() and grad_from <= num_blocks):
        student.set_context(cache, conditioning)
    with torch.no_grad():
        cond0 = i2v_condition(reference, num_frames=1, temporal_stride=stride)
        student.commit_block(cache, block_index=0, latents=reference, cond=cond0, camera=camera[:, :1])
    if first_generated > 1 and (context is None or context.shape[2] < 1 + (first_generated - 1) * f):
        raise ValueError(
            f"teacher forcing up to block {first_generated - 1} needs that many real latent blocks"
        )
    blocks, exits = [reference], []
    for block in range(1, num_blocks + 1):
        start = cache.layout.frame_start(block)
        cond = i2v_condition(reference, num_frames=f, temporal_stride=stride, frame_start=start)
        cam = camera[:, start : start + f]
        if block < first_generated:
            assert context is not None
            real = context[:, :, start : start + f]
            with torch.no_grad():
                student.commit_block(cache, block_index=block, latents=real, cond=cond, camera=cam)
            blocks.append(real)
            continue
        exit_step = int(torch.randint(len(timesteps), (1,), generator=generator))
        x = noise()
        x0 = x
        for i, t in enumerate(timesteps[: exit_step + 1]):
            t_frames = torch.full((b, f), float(t), dtype=reference.dtype, device=reference.device)
            last = i == exit_step
            with torch.set_grad_enabled(last and block >= grad_from and torch.is_grad_enabled()):
                v = student.forward_step(
                    x,
                    timesteps=t_frames,
                    cond=cond,
                    camera=cam,
                    block_index=block,
                    cache=cache,
                    expert=student.expert_for(float(t)),
                )
                x0 = x0_from_velocity(x, v, timesteps_to_sigmas(t_frames))
            if not last:
                sigma = timesteps_to_sigmas(torch.full((b, f), float(timesteps[i + 1]), device=x.device))
                x = add_noise(x0.detach(), noise(), sigma)
        with torch.no_grad():
            student.commit_block(cache, block_index=block, latents=x0.detach(), cond=cond, camera=cam)
        blocks.append(x0)
        exits.append(exit_step)
    return SelfForcingRollout(torch.cat(blocks, dim=2), exits)
