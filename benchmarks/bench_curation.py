"""Curation throughput on this machine: clips/min with 1 and 2 Ray Data workers on 64-frame 128 px
SynthWorld raw pairs (issue goal ≥ 50 clips/min), and the estimated camera's yaw error vs truth."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from worldloop.components.curation.config import CurationConfig
from worldloop.components.curation.dataset import read_manifest
from worldloop.components.curation.pipeline import run_curation
from worldloop.components.curation.report import camera_error_report
from worldloop.components.synthworld import SynthConfig, write_raw

GOAL = 50.0


def main(clips: int = 16, frames: int = 64, size: int = 128) -> None:
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        write_raw(raw, SynthConfig(size=size, frames=frames), clips=clips, seed=5, bad_fraction=0.0)
        cfg = CurationConfig(shard_size=2)
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        print(f"curation of {clips} raw pairs ({frames} frames, {size}x{size}), {os.cpu_count()} CPUs")
        # Warm-up: start Ray's worker processes (imports, OpenCV, torch) so the runs below measure
        # steady-state curation, as a long job would see it.
        warm = Path(tmp) / "warm"
        write_raw(warm, SynthConfig(size=32, frames=9), clips=2, seed=1, bad_fraction=0.0)
        run_curation(str(warm), str(Path(tmp) / "warm-out"), CurationConfig(shard_size=1), workers=2)
        start = time.perf_counter()
        run_curation(str(raw), str(Path(tmp) / "local"), cfg, executor="local")
        local = clips / (time.perf_counter() - start) * 60
        print(f"  in-process (no Ray): {local:6.1f} clips/min ({local / GOAL:.2f}x the {GOAL:.0f} goal)")
        rates = {}
        for workers in (1, 2):
            out = Path(tmp) / f"out{workers}"
            start = time.perf_counter()
            summary = run_curation(str(raw), str(out), cfg, workers=workers, executor="ray")
            seconds = time.perf_counter() - start
            rates[workers] = clips / seconds * 60
            print(
                f"  {workers} worker(s): {seconds:6.1f} s, {rates[workers]:6.1f} clips/min "
                f"({rates[workers] / GOAL:.2f}x the {GOAL:.0f} goal), kept {summary.kept_clips}"
            )
        print(f"  speed-up 2 vs 1 workers: {rates[2] / rates[1]:.2f}x (Ray workers warmed up first)")
        report = camera_error_report(read_manifest(str(Path(tmp) / "out1")), raw / "_truth")
        print("  " + report.line())
    ray.shutdown()


if __name__ == "__main__":
    main()
