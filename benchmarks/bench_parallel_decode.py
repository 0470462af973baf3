"""Height-tiled VAE decode on CPU: one process vs two gloo ranks, each decoding half the rows (issue 19).

The tiny VAE streams blocks of 2 latent frames (8 video frames) at 256×256 — the decode a
sequence-parallel serving replica splits over its ranks (``model/parallel/vae_decode.py``). Ranks and
threads: one process with 1 thread, the same with 2 threads (torch's own intra-op split of the same 2
cores), and 2 ranks of 1 thread each. Each number is the best over streamed blocks after a warm-up:
wall time, and the CPU time of the process (of rank 0: its share of the work plus the exchanges),
which a machine shared with other jobs disturbs less than the wall time.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from worldloop.model.vae import CausalVideoVAE, tiny_vae


def _setup(size: int, blocks: int) -> tuple[CausalVideoVAE, torch.Tensor]:
    torch.manual_seed(0)
    vae = CausalVideoVAE(tiny_vae()).eval()
    h = size // vae.cfg.spatial_stride
    latents = torch.randn(1, vae.cfg.latent_channels, 1 + 2 * (blocks + 1), h, h)
    return vae, latents


def _stream(vae: CausalVideoVAE, latents: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Best wall and CPU seconds per 2-latent-frame block (the first block is a warm-up), the video."""
    wall, cpu, parts = [], [], []
    with torch.no_grad():
        cache = vae.new_decode_cache()
        parts.append(vae.decode_step(latents[:, :, :1], cache))
        for start in range(1, latents.shape[2], 2):
            t0, c0 = time.perf_counter(), time.process_time()
            parts.append(vae.decode_step(latents[:, :, start : start + 2], cache))
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return min(wall[1:]), min(cpu[1:]), torch.cat(parts, dim=2)


def _rank(rank: int, world: int, tmp: str, size: int, blocks: int) -> None:
    from worldloop.model.parallel.vae_decode import apply_tiled_decode

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        vae, latents = _setup(size, blocks)
        apply_tiled_decode(vae)
        wall, cpu, video = _stream(vae, latents)
        if rank == 0:
            torch.save({"wall": wall, "cpu": cpu, "video": video}, Path(tmp) / "tiled.pt")
    finally:
        dist.destroy_process_group()


def main(size: int = 256, blocks: int = 4, world: int = 2) -> None:
    load = os.getloadavg()[0]  # other jobs on the machine: the wall times need free cores
    threads = torch.get_num_threads()
    vae, latents = _setup(size, blocks)
    torch.set_num_threads(1)
    one, one_cpu, video = _stream(vae, latents)
    torch.set_num_threads(world)
    intra, intra_cpu, _ = _stream(vae, latents)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(world, tmp, size, blocks), nprocs=world, join=True)
        tiled = torch.load(Path(tmp) / "tiled.pt")
    frames = 2 * vae.cfg.temporal_stride
    diff = float((tiled["video"] - video).abs().max())
    print(
        f"tiny VAE streaming decode, {size}x{size}, {frames} frames per block, {os.cpu_count()} CPUs "
        f"(load average {load:.1f} before the run)"
    )
    rows = [
        ("1 process, 1 thread", one, one_cpu),
        (f"1 process, {world} threads", intra, intra_cpu),
        (f"{world} gloo ranks, 1 thread", tiled["wall"], tiled["cpu"]),
    ]
    for name, wall, cpu in rows:
        print(
            f"  {name:24s} wall {wall * 1e3:7.1f} ms/block ({one / wall:.2f}x)   "
            f"CPU {cpu * 1e3:7.1f} ms/block ({one_cpu / cpu:.2f}x)"
        )
    print(f"  max |tiled - one device| = {diff:.1e}")


if __name__ == "__main__":
    main()
