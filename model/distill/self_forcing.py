"""Self-Forcing rollout: the causal student generates a clip block by block from its own outputs, with
the same KV cache (sink + window) and few-step expert-aligned schedule the serving ``Rollout`` uses.

Each block is denoised by :func:`~worldloop.model.block_sampler.denoise_block`, the sampler serving runs.
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from worldloop.model.arch.world_model import Conditioning, WorldModel, i2v_condition
from worldloop.model.block_sampler import BlockNoise, denoise_block
from worldloop.model.diffusion.sampler import FewStepScheduler


@dataclass(frozen=True)
class SelfForcingRollout:
    video_latents: Tensor  # (B, C, T, h, w): frame 0 = reference, then the blocks (with grad where trained)
    exit_steps: list[int]  # the exit step of each generated block
    forced: list[bool]  # per block 1 .. num_blocks: taken from the real context (teacher forcing)
    recaches: int = 0  # instruction changes applied (one KV recache each)


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
    forced: Sequence[bool] | None = None,
    grad_from: int = 1,
    global_batch: int | None = None,
    first_row: int = 0,
    exit_steps: Sequence[int] | None = None,
    turns: Mapping[int, Conditioning] | None = None,
    still: Tensor | None = None,
) -> SelfForcingRollout:
    """Generate ``num_blocks`` blocks after the reference latent frame.

    Args:
        reference: (B, C, 1, h, w) clean latent of the first frame.
        camera: (B, T, 6·stride, H, W) grouped Plücker rays for all T = 1 + num_blocks·block_frames.
        timesteps: the student's few-step list, strictly decreasing from 1000.
        context: (B, C, ≥ T, h, w) real latents, for the blocks ``forced`` marks.
        forced: per block 1 .. num_blocks, whether it is taken from ``context`` instead of generated
            (teacher forcing, stage 4: the cache then holds real footage for the blocks after it).
        grad_from: generated blocks before this one run entirely without gradient (long rollouts
            keep the graph only for the window being aligned).
        global_batch: rows of every noise draw (default: this batch's B); this batch takes rows
            ``first_row .. first_row + B`` of it (data-parallel rank r of W: ``W·B`` and ``r·B``).
        exit_steps: each generated block's exit step (default: drawn from ``generator`` per block,
            before its noise).
        turns: instruction changes, block → the conditioning from that block on; before the block the
            cache is recached with it (:meth:`WorldModel.recache`), exactly as serving's ``Rollout``
            does when a player types a new instruction. ``conditioning`` holds until the first turn.
        still: (B, C, 1, h, w) the reference held still, for a model with ``i2v_still`` (every block's
            I2V channels carry it, as serving's ``Rollout`` does).
    """
    cfg = student.cfg
    f, stride = cfg.causal.block_frames, cfg.vae.temporal_stride
    if cfg.i2v_still != (still is not None):
        raise ValueError(
            "the student conditions on the still latent (i2v_still): pass still"
            if cfg.i2v_still
            else "still is given, but the student does not condition on it (i2v_still is off)"
        )
    b, c, _, h, w = reference.shape
    total = 1 + num_blocks * f
    block_noise = BlockNoise(generator, global_batch, first_row)
    scheduler = FewStepScheduler(timesteps)
    forced = [False] * num_blocks if forced is None else list(forced)
    if len(forced) != num_blocks:
        raise ValueError(f"forced has {len(forced)} entries for {num_blocks} blocks")
    if any(forced) and (
        context is None or context.shape[2] < 1 + (max(i for i, x in enumerate(forced) if x) + 1) * f
    ):
        raise ValueError("teacher forcing needs a real latent block in context for every forced block")
    generated = forced.count(False)
    if exit_steps is not None and len(exit_steps) != generated:
        raise ValueError(f"exit_steps has {len(exit_steps)} entries for {generated} generated blocks")
    if camera.shape[1] != total:
        raise ValueError(f"camera has {camera.shape[1]} latent frames, the rollout needs {total}")
    turns = dict(turns or {})
    if any(not 1 <= block <= num_blocks for block in turns):
        raise ValueError(f"instruction turns at blocks {sorted(turns)} are not all in 1 .. {num_blocks}")
    context_grad = torch.is_grad_enabled() and grad_from <= num_blocks
    cache = student.new_cache(batch=b, height=height, width=width, dtype=student.dtype)
    with torch.set_grad_enabled(context_grad):
        student.set_context(cache, conditioning)
    with torch.no_grad():
        cond0 = i2v_condition(reference, num_frames=1, temporal_stride=stride)
        student.commit_block(cache, block_index=0, latents=reference, cond=cond0, camera=camera[:, :1])
    blocks: list[Tensor] = [reference]
    exits: list[int] = []
    for block in range(1, num_blocks + 1):
        if block in turns:
            with torch.set_grad_enabled(context_grad):
                student.recache(cache, turns[block])
        start = cache.layout.frame_start(block)
        cond = i2v_condition(reference, num_frames=f, temporal_stride=stride, frame_start=start, still=still)
        cam = camera[:, start : start + f]
        if forced[block - 1]:
            assert context is not None
            real = context[:, :, start : start + f]
            with torch.no_grad():
                student.commit_block(cache, block_index=block, latents=real, cond=cond, camera=cam)
            blocks.append(real)
            continue
        if exit_steps is None:
            exit_step = int(torch.randint(len(scheduler), (1,), generator=generator))
        else:
            exit_step = int(exit_steps[len(exits)])
        grad = block >= grad_from and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            camera_tokens = student.encode_camera(cam)
        x0 = denoise_block(
            student,
            scheduler=scheduler,
            noise=lambda: block_noise((b, c, f, h, w), reference),
            cond=cond,
            camera=cam,
            block_index=block,
            cache=cache,
            camera_tokens=camera_tokens,
            exit_step=exit_step,
            grad=grad,
        )
        with torch.no_grad():
            student.commit_block(
                cache,
                block_index=block,
                latents=x0.detach(),
                cond=cond,
                camera=cam,
                camera_tokens=camera_tokens,
            )
        blocks.append(x0)
        exits.append(exit_step)
    return SelfForcingRollout(torch.cat(blocks, dim=2), exits, forced, len(turns))
