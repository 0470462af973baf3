"""Stages 1–2: two processes (torchrun, gloo) with batch 1 each follow the same loss curve and end with
the same parameters and EMA as one process (ZeRO-0, no DeepSpeed partitioning) with batch 2 on the same
global batch, for ZeRO stages 1, 2 and 3 — also when the two-process run is killed after step 2 and
resumed, which exercises the per-rank optimizer shards and the order of a resume: weights go into the
module before DeepSpeed wraps it, or ZeRO-1/2 step on from their stale fp32 master copy.

Stage 2 under ZeRO-3 trains the interaction extractor, whose ``nn.MultiheadAttention`` reads the
partitioned ``out_proj.weight`` without calling ``out_proj``; that run also tracks in MLflow, so every
rank takes part in the end-of-stage sample (a collective under ZeRO-3) and rank 0 logs it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from train_launch import assert_matches_one_process, small_config, train_cli

from worldloop.components.synthworld import SynthConfig, write_dataset

STEPS = 4
CLI = {"action": "action", "instruction": "sft"}


def _config(path: Path, stage: str, batch: int, zero: int) -> Path:
    return small_config(path, stage, batch=batch, zero=zero, steps=STEPS)


def _train(
    data: Path,
    out: Path,
    stage: str,
    *,
    nproc: int,
    zero: int,
    steps: int | None = None,
    home: Path | None = None,
) -> Path:
    """``worldloop train`` of ``stage`` in ``nproc`` processes; tracked in MLflow under ``home``."""
    train_cli(
        [
            "--stage",
            CLI[stage],
            "--data",
            str(data),
            "--out",
            str(out),
            "--config",
            str(_config(out.with_suffix(".yaml"), stage, 2 // nproc, zero)),
            *(["--steps", str(steps)] if steps else []),
            *(["--no-track"] if home is None else []),
        ],
        nproc=nproc,
        env={"WORLDLOOP_HOME": str(home)} if home else None,
    )
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    write_dataset(root / "data", SynthConfig(size=64, frames=17), clips=2, seed=6)
    return root / "data"


@pytest.fixture(scope="module")
def reference(data: Path) -> Callable[[str], Path]:
    """One process, batch 2, no ZeRO: the run of a stage every ZeRO stage must reproduce (run once)."""
    runs: dict[str, Path] = {}

    def run(stage: str) -> Path:
        if stage not in runs:
            runs[stage] = _train(data, data.parent / f"one-{stage}", stage, nproc=1, zero=0)
        return runs[stage]

    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "zero", "resumed"),
    [("action", 1, False), ("action", 2, True), ("action", 3, True), ("instruction", 3, False)],
)
def test_two_processes_match_one_process(
    tmp_path: Path, data: Path, reference: Callable[[str], Path], stage: str, zero: int, resumed: bool
) -> None:
    out, home = tmp_path / "two", (tmp_path / "home" if stage == "instruction" else None)
    if resumed:
        _train(data, out, stage, nproc=2, zero=zero, steps=2)  # killed after step 2 …
    _train(data, out, stage, nproc=2, zero=zero, home=home)  # … and resumed (or straight through)
    assert_matches_one_process(reference(stage) / f"step-{STEPS:08d}", out / f"step-{STEPS:08d}")
    if home is not None:  # rank 0 logged the sample every rank helped generate (ZeRO-3 gathers)
        client = mlflow.tracking.MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}")
        (run,) = client.search_runs([client.get_experiment_by_name("worldloop-training").experiment_id])
        assert run.info.status == "FINISHED"
        assert "sample_instruction.mp4" in [f.path for f in client.list_artifacts(run.info.run_id)]
