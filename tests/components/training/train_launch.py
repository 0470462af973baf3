"""Shared by the multi-process training tests (imported by module name, pytest puts this folder on
sys.path): ``worldloop train`` under torchrun, the small stage config they train, and the check that
two ranks ended where one process did."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from worldloop.config_io import save_yaml
from worldloop.model.train.config import CurriculumPhase, stage_preset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_cli(args: Sequence[str], *, nproc: int, env: dict[str, str] | None = None) -> None:
    """``python -m worldloop.cli.main train ARGS`` in ``nproc`` processes (torchrun when > 1)."""
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
    run = subprocess.run(
        [sys.executable, *(launcher if nproc > 1 else []), "-m", "worldloop.cli.main", "train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env} if env else None,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def small_config(path: Path, stage: str, *, batch: int, zero: int, steps: int) -> Path:
    """``stage`` at 32×32 for ``steps`` steps of 9-frame clips, ``batch`` clips per rank, ZeRO ``zero``,
    a checkpoint every 2 steps, lr 1e-3 (large enough that a misrouted update shows), saved to ``path``."""
    cfg = stage_preset(stage).model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=9, steps=steps),),
            "height": 32,
            "width": 32,
            "batch_size": batch,
            "zero_stage": zero,
            "checkpoint_every": 2,
            "lr": 1e-3,
        }
    )
    return save_yaml(cfg, path)


def assert_matches_one_process(a: Path, b: Path) -> None:
    """Checkpoint ``b`` of two ranks (batch B each, ZeRO with its optimizer in two shards) has the loss
    history, parameters and EMA of checkpoint ``a`` of one process (batch 2·B, no ZeRO)."""
    state_a, state_b = (json.loads((f / "state.json").read_text()) for f in (a, b))
    assert state_a["world_size"] == 1 and state_b["world_size"] == 2
    assert state_b["optimizer_shards"] == 2 and (b / "optimizer.rank1.safetensors").exists()
    torch.testing.assert_close(
        torch.tensor(state_b["loss_history"]), torch.tensor(state_a["loss_history"]), rtol=1e-4, atol=1e-5
    )
    # Summation order differs (all-reduce of two means vs one mean of two), and Adam divides by
    # √v, which magnifies that float noise where gradients are tiny (near its eps, a noisy gradient's
    # first update is a sizeable part of lr = 1e-3 either way): allow half an Adam step on any one
    # element (2.4e-4 measured with the linear-code VAE's latents) but 1e-6 on average over a tensor;
    # the EMA moves 0.001 of it. Misrouted gradients, as ZeRO-2 gave before every expert ran, already
    # moved the loss by ~1% at step 2 and fail the loss check above; a resume that stepped on from
    # ZeRO's fp32 master copy of the initial weights is a whole step off on every element.
    for name, tolerance, mean_tolerance in (("model", 5e-4, 1e-6), ("ema", 1e-6, 1e-8)):
        x, y = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].shape == y[k].shape, f"{name}/{k}: {y[k].shape} (partition?) vs {x[k].shape}"
            diff = float((y[k] - x[k]).abs().max())
            mean = float((y[k] - x[k]).abs().mean())
            assert mean <= mean_tolerance, f"{name}/{k}: mean |Δ| {mean:.2e}"
            assert diff <= tolerance, f"{name}/{k}: max |Δ| {diff:.2e}"
