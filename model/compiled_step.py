"""Whole-step compilation of block denoising (issue 19): one ``torch.compile``d callable runs an expert's
forward for a block against the KV cache *and* the scheduler's update, for every denoising step of
every block and for the clean pass that commits the block.

On CUDA it compiles with ``mode="reduce-overhead"``: Inductor's kernels replayed as a CUDA graph, so a
step costs one graph launch instead of thousands of kernel launches from Python. A CUDA graph needs the
same shapes and the same input addresses on every replay, and no host-side decision inside it:

* **Fixed shapes.** The KV cache's buffers have a fixed size (sinks + window, allocated once), but the
  eager reader (:meth:`KVCache.visible_index`) slices them to the tokens a block may see, a length
  that grows while the window fills and shrinks after a recache. The compiled step reads the whole
  buffer instead, with :meth:`KVCache.visible_mask` marking the slots it may not see: ``None`` once the
  cache is full (every block from the first full window on), a (capacity,) bool mask before that and
  while a recache rebuilds the window (through the compiled clean pass too). So there are two graphs,
  "filling" (masked) and "full" (unmasked: the fast attention kernels), and no recompilation once the
  window has filled.
* **Host work stays outside.** RoPE tables (which depend on the block's first frame) and the
  visibility mask are computed on the host once per block and passed in; the step index never enters
  the graph: :meth:`Scheduler.update` takes the timesteps as tensors, with zero noise and ``t_next = 0``
  at the last step, so one graph serves every step. The expert is an argument: with Dynamo's inlining
  of ``nn.Module`` calls (its default) both MoE experts run the same graph.
* **Static addresses.** The cache buffers are marked static (:func:`torch._dynamo.mark_static_address`),
  so the graph reads them in place rather than copying gigabytes into its own input buffers; a new
  stream's cache (another address) records its own graph once. Outputs live in the graph's memory pool
  and are overwritten by the next replay: the next state is cloned, the block's K/V are copied into the
  cache before the next call.

Elsewhere (CPU, or ``mode`` given) the same callable is compiled with that mode, which is what the CPU
tests check: the compiled stream equals the eager one and nothing recompiles once the window is full.
Training never takes this path (its exit step records a graph; Dynamo + autograd is another matter).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from worldloop.model.arch.anchor import anchored
from worldloop.model.arch.dit import KV, ExpertTransformer
from worldloop.model.arch.kv_cache import BlockInputs, KVCache
from worldloop.model.arch.world_model import WorldModel
from worldloop.model.diffusion.sampler import Scheduler

CUDA_GRAPHS = "reduce-overhead"


def _block_step(
    expert: ExpertTransformer,
    scheduler: Scheduler,
    x: Tensor,
    *,
    timesteps: Tensor,
    t_next: Tensor,
    noise: Tensor,
    cond: Tensor,
    camera_tokens: Tensor,
    cos: Tensor,
    sin: Tensor,
    context_keys: list[Tensor],
    context_values: list[Tensor],
    context_mask: Tensor,
    keys: Tensor,
    values: Tensor,
    past_mask: Tensor | None,
    anchor: float | None,
    stride: int,
) -> tuple[Tensor, list[KV]]:
    """What the compiled callable runs: :meth:`WorldModel.forward_step` over the whole cache buffer, then
    :meth:`Scheduler.update`. Returns the next state and the block's per-layer rotated (k, v). ``anchor``
    and ``stride``: the model's ``i2v_anchor`` and VAE temporal stride (:meth:`WorldModel.anchor`)."""
    latents = x.to(noise.dtype)  # the denoiser's dtype (the scheduler may keep a wider state)
    inputs = torch.cat([latents, cond.to(latents.dtype)], dim=1).to(expert.patch_embedding.weight.dtype)
    velocity, new_kv = expert(
        inputs,
        timesteps=timesteps,
        frame_start=0,  # unused: the RoPE tables of the block's frames come with the call
        context_kv=list(zip(context_keys, context_values, strict=True)),
        context_mask=context_mask,
        camera_tokens=camera_tokens,
        past=[(keys[layer], values[layer]) for layer in range(keys.shape[0])],
        past_mask=past_mask,
        rope=(cos, sin),
    )
    if anchor is not None:
        velocity = anchored(velocity, latents, cond, timesteps, stride=stride, std=anchor)
    return scheduler.update(x, velocity.to(latents.dtype), timesteps, t_next, noise), new_kv


class CompiledStep:
    """The compiled denoising step of ``model``'s blocks (see the module docstring).

    ``mode`` is ``torch.compile``'s for Inductor: default ``"reduce-overhead"`` (CUDA graphs) on CUDA,
    Inductor's default elsewhere. ``backend="eager"`` only traces (Dynamo's graphs and guards, no
    kernels): how a dry run checks the compiled path quickly. Not thread-safe, and on CUDA bound to
    one thread: CUDA-graph trees keep their recordings per thread, so call it from one thread.
    """

    def __init__(self, model: WorldModel, *, mode: str | None = None, backend: str = "inductor") -> None:
        self.model = model
        if backend != "inductor":
            mode = None  # modes are Inductor's
        elif mode is None:
            mode = CUDA_GRAPHS if model.device.type == "cuda" else "default"
        self.mode, self.backend = mode, backend
        self.graphs = mode == CUDA_GRAPHS  # outputs are overwritten by the next replay
        # dynamic=False: every shape is fixed (see the module docstring); a new shape is a new graph.
        self._step = torch.compile(_block_step, backend=backend, mode=mode, dynamic=False)
        self._rope: tuple[tuple[int, tuple[int, int, int]], KV] | None = None

    def _rope_tables(self, block_index: int, cache: KVCache, latents: Tensor) -> KV:
        """RoPE tables of ``block_index``'s tokens, computed once per block (every step shares them)."""
        cfg = self.model.cfg
        pt, ph, pw = cfg.patch_size
        grid = (latents.shape[2] // pt, latents.shape[3] // ph, latents.shape[4] // pw)
        key = (cache.layout.frame_start(block_index), grid)
        if self._rope is None or self._rope[0] != key:
            self._rope = key, self.model.expert(0).rope(key[0], grid, latents.device)
        return self._rope[1]

    def step(
        self,
        x: Tensor,
        *,
        scheduler: Scheduler,
        timesteps: Tensor,
        t_next: Tensor,
        noise: Tensor,
        cond: Tensor,
        camera_tokens: Tensor,
        block_index: int,
        cache: KVCache,
        expert: int,
    ) -> tuple[Tensor, list[KV]]:
        """One step of block ``block_index``: :meth:`Scheduler.update` of ``x`` (B, C, f, h, w) after
        ``expert``'s velocity at ``timesteps`` (B, f), and the block's per-layer rotated (k, v) (B, L, H,
        Dh). ``cond`` is the I2V channels as the experts read them (:meth:`WorldModel.condition`).
        Nothing is written to ``cache``. Under CUDA graphs the K/V are the graph's own memory: use them
        before the next call."""
        layout = cache.layout
        if x.shape[2] != layout.frames_in_block(block_index) or block_index == 0:
            raise ValueError(
                f"a compiled step runs blocks 1.. of {layout.block_frames} latent frames; got block "
                f"{block_index} with {x.shape[2]} (block 0, the reference frame, is committed eagerly)"
            )
        kv = cache.experts[expert]
        if not kv.context_keys or cache.context_mask is None:
            raise ValueError("cache has no context: call set_context(cache, conditioning) first")
        cos, sin = self._rope_tables(block_index, cache, x)
        if self.graphs:
            # Read in place by every replay (a new address records a new graph once, not a copy per call).
            torch._dynamo.mark_static_address(kv.keys, guard=False)
            torch._dynamo.mark_static_address(kv.values, guard=False)
            # Each call is a generation of its own: the previous call's outputs may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        x_next, new_kv = cast(
            tuple[Tensor, list[KV]],
            self._step(
                self.model.expert(expert),
                scheduler,
                x,
                timesteps=timesteps,
                t_next=t_next,
                noise=noise,
                cond=cond,
                camera_tokens=camera_tokens,
                cos=cos,
                sin=sin,
                context_keys=kv.context_keys,
                context_values=kv.context_values,
                context_mask=cache.context_mask,
                keys=kv.keys,
                values=kv.values,
                past_mask=cache.visible_mask(expert, block_index),
                anchor=self.model.cfg.i2v_anchor,
                stride=self.model.cfg.vae.temporal_stride,
            ),
        )
        return (x_next.clone() if self.graphs else x_next), new_kv  # the state outlives the next call

    def commit(
        self,
        cache: KVCache,
        *,
        scheduler: Scheduler,
        block_index: int,
        latents: Tensor,
        cond: Tensor,
        camera: Tensor,
        camera_tokens: Tensor | None = None,
    ) -> None:
        """:meth:`WorldModel.commit_block` through the compiled step: the clean pass at t = 0 of every
        expert, its K/V written to ``cache``, the block's inputs kept for recache. ``scheduler`` is the
        denoising steps' (its update runs and is dropped: the same graph serves both)."""
        if camera_tokens is None:
            camera_tokens = self.model.encode_camera(camera)
        b, f = latents.shape[0], latents.shape[2]
        t0 = latents.new_zeros(b, f)
        zeros = torch.zeros_like(latents)
        seen = self.model.condition(cond, camera)  # what the experts read (i2v_warp moves the still latent)
        for e in range(self.model.cfg.num_experts):
            _, new_kv = self.step(
                latents,
                scheduler=scheduler,
                timesteps=t0,
                t_next=torch.zeros(b, f, device=latents.device),
                noise=zeros,
                cond=seen,
                camera_tokens=camera_tokens,
                block_index=block_index,
                cache=cache,
                expert=e,
            )
            cache.write_block(e, block_index, new_kv)  # copied out before the next replay reuses them
        cache.remember(block_index, BlockInputs(latents=latents, cond=cond, camera=camera))
