"""Tiny causal VAE on this CPU: encode frames/s, and streaming decode vs re-decoding the whole past.

A streaming decoder keeps each causal conv's last ``k_t - 1`` input frames, so block N costs the
same as block 1; without the cache, showing block N means decoding all N blocks again.
"""

from __future__ import annotations

import statistics
import time

import torch

from worldloop.model.vae import CausalVideoVAE, tiny_vae


def main(size: int = 64, blocks: int = 16, block_latents: int = 2) -> None:
    torch.manual_seed(0)
    vae = CausalVideoVAE(tiny_vae()).eval()
    h = size // vae.cfg.spatial_stride
    video = torch.rand(1, 3, 33, size, size) * 2 - 1
    with torch.no_grad():
        vae.encode(video)
        start = time.perf_counter()
        vae.encode(video)
        encode = time.perf_counter() - start

        latents = torch.randn(1, vae.cfg.latent_channels, 1 + blocks * block_latents, h, h)
        cache = vae.new_decode_cache()
        vae.decode_step(latents[:, :, :1], cache)
        steps = []
        for b in range(blocks):
            chunk = latents[:, :, 1 + b * block_latents : 1 + (b + 1) * block_latents]
            start = time.perf_counter()
            vae.decode_step(chunk, cache)
            steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        vae.decode(latents)  # what showing the last block costs without a cache
        full = time.perf_counter() - start
    step = statistics.median(steps)
    frames = block_latents * vae.cfg.temporal_stride
    print(f"tiny VAE {size}x{size} ({sum(p.numel() for p in vae.parameters()):,} parameters)")
    print(f"  encode 33 frames {encode * 1e3:7.1f} ms -> {33 / encode:6.1f} frames/s")
    print(
        f"  streaming decode {step * 1e3:7.1f} ms/block of {frames} frames -> {frames / step:6.1f} frames/s"
    )
    print(
        f"  re-decoding all {blocks} blocks instead: {full * 1e3:.1f} ms = {full / step:.1f}x one "
        f"streamed block (decode cache {cache.num_bytes:,} B, fixed)"
    )


if __name__ == "__main__":
    main()
