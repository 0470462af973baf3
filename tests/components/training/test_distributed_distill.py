"""Stages 3 (distill) and 4 (extend) under ZeRO-2 and ZeRO-3: two processes (torchrun, gloo) with batch
1 each follow the same loss curve and end with the same student, critic and EMA as one process (ZeRO-0,
no DeepSpeed partitioning at all) with batch 2 on the same global batch — even though the two-process
run is killed after its first step and resumed, so the per-rank optimizer shards are exercised too.

That equivalence holds because every random choice that decides which modules run (exit steps, rollout
length, teacher forcing, player actions) is drawn from the global batch's seed, each rank keeping its
own rows of the noise, and the DMD scores run every expert on every rank. ZeRO-3 needs exactly that:
its forward gathers each module's partitioned parameters with a collective, so ranks that ran
different modules would hang or mix up parameters rather than drift.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_launch import train_cli

from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.config_io import save_yaml
from worldloop.model import build_world_model, load_preset
from worldloop.model.spec import preset_spec
from worldloop.model.train.checkpoint import load_checkpoint, save_checkpoint
from worldloop.model.train.config import CurriculumPhase, LongExtensionConfig, TrainConfig, stage_preset

STEPS = 2
CLI = {"distill": "distill", "long": "extend"}


def _config(stage: str, batch: int, zero: int) -> TrainConfig:
    cfg = stage_preset(stage)
    assert cfg.distill is not None
    update: dict[str, object] = {
        # distill: 1 generated block; extend: 2 real blocks, rollouts of 2–3 blocks, 1-block window
        "curriculum": (CurriculumPhase(frames=9 if stage == "distill" else 17, steps=STEPS),),
        "height": 32,
        "width": 32,
        "batch_size": batch,
        "zero_stage": zero,
        "checkpoint_every": 1,
        "distill": cfg.distill.model_copy(update={"critic_steps_per_generator": 1}),
    }
    if stage == "long":
        update["long"] = LongExtensionConfig(
            min_rollout_blocks=2, max_rollout_blocks=3, window_blocks=1, teacher_forcing_prob=0.5
        )
    return cfg.model_copy(update=update)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """SynthWorld clips and a stage-2 checkpoint to start from (output heads not zero, unlike a fresh
    model, so teacher, critic and student disagree from the first step)."""
    root = tmp_path_factory.mktemp("distributed-distill")
    write_dataset(root / "data", SynthConfig(size=64, frames=17), clips=2, seed=6)
    torch.manual_seed(0)
    model = build_world_model(load_preset("tiny"))
    for i in range(model.cfg.num_experts):
        torch.nn.init.normal_(model.expert(i).head.head.weight, std=0.02)
    save_checkpoint(
        root / "init",
        0,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        ema={},
        state={},
        spec=preset_spec("tiny", height=32, width=32),  # what --init rebuilds the model stack from
    )
    return root / "data", root / "init"


def _train(root: Path, setup: tuple[Path, Path], stage: str, *, nproc: int, zero: int, steps: int) -> Path:
    data, init = setup
    out = root / f"{stage}-z{zero}-n{nproc}"
    config = save_yaml(_config(stage, 2 // nproc, zero), root / f"{out.name}.yaml")
    train_cli(
        [
            "--stage",
            CLI[stage],
            "--data",
            str(data),
            "--init",
            str(init),
            "--out",
            str(out),
            "--config",
            str(config),
            "--steps",
            str(steps),
            "--no-track",
        ],
        nproc=nproc,
    )
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, setup: tuple[Path, Path]) -> dict[str, Path]:
    """One process, batch 2, no ZeRO: the run both ZeRO stages must reproduce, per training stage."""
    root = tmp_path_factory.mktemp("reference")
    return {stage: _train(root, setup, stage, nproc=1, zero=0, steps=STEPS) for stage in CLI}


@pytest.mark.slow
# Each stage under one ZeRO stage keeps CI short; together they cover both stages and both ZeRO
# stages (ZeRO-3 for the stage with the most modules: student, critic and a partitioned teacher).
@pytest.mark.parametrize(("stage", "zero"), [("distill", 3), ("long", 2)])
def test_two_zero_processes_resumed_match_one_plain_process(
    tmp_path: Path, setup: tuple[Path, Path], reference: dict[str, Path], stage: str, zero: int
) -> None:
    _train(tmp_path, setup, stage, nproc=2, zero=zero, steps=1)  # killed after step 1 …
    two = _train(tmp_path, setup, stage, nproc=2, zero=zero, steps=STEPS)  # … and resumed
    last = f"step-{STEPS:08d}"
    a, b = reference[stage] / last, two / last
    state_a, state_b = (json.loads((f / "state.json").read_text()) for f in (a, b))
    assert state_a["world_size"] == 1 and state_b["world_size"] == 2
    assert state_b["optimizer_shards"] == 2
    shards = {"optimizer.rank1.safetensors", "critic_optimizer.rank1.safetensors"}
    assert shards <= {p.name for p in b.iterdir()}
    torch.testing.assert_close(
        torch.tensor(state_b["loss_history"]), torch.tensor(state_a["loss_history"]), rtol=1e-4, atol=1e-5
    )
    # Summation order differs (two ranks' gradients averaged vs one batch of two, ZeRO-3's own linear
    # kernels), and Adam divides by √v, which magnifies that float noise where gradients are tiny: allow
    # a tenth of one Adam step of each model (student lr ≤ 1e-4, critic lr ≤ 1e-3; the EMA moves 0.001
    # of the student's step). A weight whose gradient is float noise itself (~1e-9, inside Adam's eps)
    # moves by lr·g/eps in either run, so a few such weights may differ by more: at most one in 100,000
    # of a model, and never by half a step (2 of 2.7M student weights were 1.1e-5 and 2.2e-5 off). A run
    # that went wrong moves whole steps: a resumed run scoring against the wrong teacher was 1.7e-4 off.
    for name, tolerance in (("model", 1e-5), ("critic", 1e-4), ("ema", 1e-6), ("teacher", 0.0)):
        x, y = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert x.keys() == y.keys()
        beyond = 0
        for k in x:
            assert x[k].shape == y[k].shape, f"{name}/{k}: {y[k].shape} (partition?) vs {x[k].shape}"
            diff = (y[k] - x[k]).abs()
            assert float(diff.max()) <= 5 * tolerance, f"{name}/{k}: max |Δ| {float(diff.max()):.2e}"
            beyond += int((diff > tolerance).sum())
        allowed = sum(v.numel() for v in x.values()) // 100_000 if tolerance else 0  # teacher: none
        assert beyond <= allowed, f"{name}: {beyond} weights off"
    fresh = build_world_model(load_preset("tiny"))
    load_checkpoint(b, model=fresh, optimizer=None, ema=None)  # full tensors, loadable without DeepSpeed
    saved = load_file(str(b / "model.safetensors"))
    assert all(torch.equal(p, saved[n]) for n, p in fresh.state_dict().items())
