"""SynthWorld throughput at 128×128 (issue goal: ≥ 200 frames/s on this machine)."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from worldloop.components.synthworld import SynthConfig, generate_clip
from worldloop.components.synthworld.clip import render_shot
from worldloop.components.synthworld.director import PlanRejected, plan_shot
from worldloop.components.synthworld.world import WorldRejected, generate_world
from worldloop.video import encode_mp4

GOAL_FPS = 200.0


def _timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for i in range(repeats):
        fn(i)
    return time.perf_counter() - start


def main(size: int = 128, frames: int = 33, clips: int = 12) -> None:
    import numpy as np

    cfg = SynthConfig(size=size, frames=frames)
    generate_clip(cfg, 0)  # warm caches (textures, particle fields)
    shots = []
    for seed in range(clips):
        rng = np.random.default_rng(seed)
        while True:
            try:
                world = generate_world(rng, cfg.map_cells)
                shots.append((world, plan_shot(world, cfg, None, rng)))
                break
            except (WorldRejected, PlanRejected):
                continue
    render_s = _timed(lambda i: render_shot(shots[i][0], shots[i][1], cfg, i), clips)
    clip_s = _timed(lambda i: generate_clip(cfg, 1000 + i), clips)
    sample = generate_clip(cfg, 1).frames
    with tempfile.TemporaryDirectory() as tmp:
        encode_s = _timed(lambda i: encode_mp4(sample, Path(tmp) / f"{i}.mp4", fps=16), clips)
    n = clips * frames
    rows = [
        ("render only (camera path fixed)", n / render_s),
        ("clip: world + plan + render + masks", n / clip_s),
        ("H.264 encode", n / encode_s),
        ("clip + encode (what `synth` does)", n / (clip_s + encode_s)),
    ]
    print(
        f"SynthWorld at {size}x{size}, {clips} clips x {frames} frames, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, one process"
    )
    for name, fps in rows:
        print(f"  {name:<40} {fps:8.0f} frames/s   {fps / GOAL_FPS:5.2f}x the {GOAL_FPS:.0f} fps goal")


if __name__ == "__main__":
    main()
