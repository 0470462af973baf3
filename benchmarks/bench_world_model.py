"""Tiny world-model rollout on this machine: frames/s, achieved FLOP/s vs a GEMM, long-stream latency.

Everything is measured in this one run and printed as numbers and ratios (never asserted):

* frames/s of :class:`Rollout` (few-step denoise + clean-KV pass + streaming VAE decode per block),
  with the share of each block spent in the VAE decode;
* achieved FLOP/s of one block (counted with ``torch.utils.flop_counter``) as a fraction of an fp32
  GEMM timed in the same run — how far the tiny shapes sit from the machine's matmul rate;
* per-block latency and KV-cache bytes at block 10 vs block 300 (a bounded cache keeps both flat);
* the cost of a recache (new instruction) measured in blocks of generation.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from worldloop.model import Rollout, WorldModel, tiny
from worldloop.model.camera import parse_action
from worldloop.model.text import HashingEncoder
from worldloop.model.vae import CausalVideoVAE


def _rollout(size: int) -> Rollout:
    torch.manual_seed(0)
    cfg = tiny()
    model = WorldModel(cfg).eval()
    for i in range(cfg.num_experts):
        torch.nn.init.normal_(model.expert(i).head.head.weight, std=0.05)  # a non-trivial velocity
    return Rollout(
        model,
        vae=CausalVideoVAE(cfg.vae).eval(),
        text_encoder=HashingEncoder(dim=cfg.text_dim),
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(0),
    )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _gemm_flops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def throughput(size: int = 64, blocks: int = 8) -> None:
    rollout = _rollout(size)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    state, _ = rollout.start(image, prompt="a torch-lit stone corridor")
    actions = [parse_action("w", mouse_dx=0.5)] * rollout.frames_per_block
    rollout.step(state, actions)  # warm-up
    times = [_timed(lambda: rollout.step(state, actions)) for _ in range(blocks)]
    per_block = statistics.median(times)

    with FlopCounterMode(display=False) as counter:
        rollout.step(state, actions)
    flops = counter.get_total_flops()
    # The VAE's share: decode the same-sized block on a warm decode cache.
    vae, cfg = rollout.vae, rollout.model.cfg
    latent = torch.randn(1, cfg.latent_channels, cfg.causal.block_frames, size // 8, size // 8)
    with torch.no_grad(), FlopCounterMode(display=False) as vae_counter:
        vae.decode_step(latent, state.decode_cache)
    with torch.no_grad():
        decode = statistics.median(
            _timed(lambda: vae.decode_step(latent, state.decode_cache)) for _ in range(5)
        )
    gemm = _gemm_flops()
    achieved = flops / per_block
    print(
        f"tiny rollout {size}x{size}, {rollout.frames_per_block} frames/block, "
        f"{len(rollout.timesteps)} denoising steps, "
        f"CPU {torch.get_num_threads()} threads / {os.cpu_count()} CPUs"
    )
    print(f"  per block {per_block * 1e3:7.1f} ms  ->  {rollout.frames_per_block / per_block:6.1f} frames/s")
    print(
        f"  VAE decode {decode * 1e3:6.1f} ms ({decode / per_block:.0%} of a block, "
        f"{vae_counter.get_total_flops() / flops:.0%} of its FLOPs)"
    )
    print(
        f"  {flops / 1e9:.2f} GFLOP/block, achieved {achieved / 1e9:.2f} GFLOP/s = "
        f"{achieved / gemm:.1%} of a 1024^3 fp32 GEMM ({gemm / 1e9:.1f} GFLOP/s) measured in this run"
    )


def long_stream(size: int = 32, last: int = 300, window: int = 11) -> None:
    rollout = _rollout(size)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    state, _ = rollout.start(image, prompt="a long walk through the halls")
    actions = [parse_action("w", mouse_dx=0.3)] * rollout.frames_per_block
    early: list[float] = []
    late: list[float] = []
    cache_bytes: dict[int, int] = {}
    started = time.perf_counter()
    for block in range(1, last + window):
        dt = _timed(lambda: rollout.step(state, actions))
        if 10 <= block < 10 + window:
            early.append(dt)
        if last <= block < last + window:
            late.append(dt)
        if block in (10, last):
            cache_bytes[block] = state.cache.nbytes() + state.decode_cache.num_bytes
        if block % 50 == 0:
            print(f"  ... block {block} ({time.perf_counter() - started:.0f} s)", flush=True)
    a, b = statistics.median(early), statistics.median(late)
    print(f"tiny rollout {size}x{size}: per-block latency, median of {window} blocks")
    print(f"  block 10   {a * 1e3:7.1f} ms   cache {cache_bytes[10]:,} B")
    print(f"  block {last}  {b * 1e3:7.1f} ms   cache {cache_bytes[last]:,} B")
    growth = cache_bytes[last] / cache_bytes[10]
    print(f"  latency ratio block {last} / block 10 = {b / a:.2f}x; cache ratio {growth:.2f}x")

    steps = [_timed(lambda: rollout.step(state, actions)) for _ in range(window)]
    cond = rollout.conditioning(state.prompt, "make it snow", batch=1)
    recached: list[int] = []
    with torch.no_grad():
        recache = statistics.median(
            _timed(lambda: recached.append(rollout.model.recache(state.cache, cond))) for _ in range(window)
        )
    step = statistics.median(steps)
    print(
        f"  recache (new instruction): {recache * 1e3:.1f} ms = {recache / step:.2f} blocks of generation "
        f"({recached[0]} window blocks recomputed, sinks kept)"
    )


def main() -> None:
    throughput()
    long_stream()


if __name__ == "__main__":
    main()
