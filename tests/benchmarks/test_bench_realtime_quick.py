"""The issue-19 GPU benchmark (``bench_gpu --only realtime sp``) on tiny shapes on this CPU: every
variant runs through the code the GPU run takes — Rollout's compile modes (Dynamo's eager backend: its
graphs and guards without the kernel compile), FP8, the decode lane, sp=2 against one device (gloo) —
and the JSON holds what the README quotes. A GPU session runs the same command without ``--quick``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks.bench_gpu", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_quick_run_measures_every_variant_and_writes_the_json(tmp_path: Path) -> None:
    done = _bench("--quick", "--only", "realtime", "sp", "--out", f"{tmp_path}/")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (path,) = tmp_path.glob("gpu-cpu-*.json")  # named after the device and the date
    results = json.loads(path.read_text())
    assert "errors" not in results, results["errors"]
    assert results["env"]["date"] and results["env"]["device"] == "cpu"
    realtime = results["realtime"]
    runs = realtime["runs"]
    assert sorted(runs) == sorted(f"{p}+{m}" for p in ("float32", "fp8") for m in ("off", "blocks", "step"))
    for label, run in runs.items():
        assert run["overlapped_fps"] > 0 and run["sequential_fps"] > 0, label
        assert run["recompiles_after_warmup"] == 0 and run["cudagraph_skips"] == 0, label
    assert runs["float32+step"]["graphs_compiled"] == 2  # the filling cache's graph and the full one's
    assert math.isinf(runs["float32+off"]["psnr_vs_eager_db"])
    assert runs["float32+step"]["psnr_vs_eager_db"] > 50  # the masked whole-buffer read: rounding only
    assert set(realtime["goals"]) >= {"bf16", "fp8", "summary"} and realtime["skipped"] == []
    sp = results["sp"]
    assert sp["backend"] == "gloo" and sp["equal"] and sp["errors"] == {}
    assert sorted(sp["runs"]) == sorted(
        ["fp32+off (equality)", "float32+off", "float32+blocks", "float32+step"]
    )
    assert all(r["speedup"] > 0 and r["max_abs_diff_latents"] < 1e-4 for r in sp["runs"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_unless_quick() -> None:
    done = _bench("--only", "realtime")
    assert done.returncode == 2 and "no CUDA device" in done.stderr and "--quick" in done.stderr
    done = _bench("--quick", "--only", "nonsense")
    assert done.returncode == 2 and "unknown sections ['nonsense']" in done.stderr
