"""The quality ladder on this CPU: train the tiny chain on SynthWorld of a training seed, then measure each
rung's checkpoint with ``worldloop eval quality`` beside random weights, the frozen first frame and the
truth, all on held-out SynthWorld. Prints one table (metrics × baselines and rungs) and the wall time
of every part. Numbers are printed, never asserted.

    python -m benchmarks.bench_quality                        # train stages 0 → 4, evaluate 0, 2, 3, 4
    python -m benchmarks.bench_quality --steps 8              # shorter curricula (steps per stage)
    python -m benchmarks.bench_quality --rungs a=DIR b=models:/worldloop@champion   # no training
    python -m benchmarks.bench_quality --cameras              # stage 1 on true vs estimated cameras
    python -m benchmarks.bench_quality --long                 # stage 4 vs stage 3 over 20-block rollouts

``--cameras`` trains stage 1 twice from the same stage-0 VAE, the same steps and the same worlds: once
on SynthWorld's labelled clips (rendered, exact cameras) and once on the same worlds' raw pairs after
curation (cameras estimated from the pixels), and puts both in the ladder: what the camera estimator
costs in camera error.

``--long`` trains the chain as the default mode does, then measures only the stage-3 and stage-4 students
on rollouts of ``--blocks`` (default 20) blocks — 10 s at tiny, past any stage-3 clip — and prints PSNR
and camera rotation error per block beside the frozen frame and random weights: the drift stage 4 is
there to remove.

Training goes through :func:`run_chain`, so a stage added to the chain (the VAE stage) is trained here
without a change; to also *evaluate* it, add its name to :data:`RUNGS` (as ``vae`` is).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from worldloop.components.evaluation.quality.contestants import INPUTS
from worldloop.components.evaluation.quality.heldout import HELD_OUT_SEED
from worldloop.components.evaluation.quality.report import fmt, ladder_table
from worldloop.components.evaluation.quality.run import BaselineCache, QualityResult, run_quality
from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.model.train.config import LONG_CLIP_FRAMES, CurriculumPhase, Stage, TrainConfig, stage_preset

# The checkpoints measured after training, by stage name: stage 0 (the VAE alone, random DiT), the
# stage 2 teacher, the stage 3 and 4 students.
RUNGS: tuple[str, ...] = ("vae", "instruction", "distill", "long")
LONG_BLOCKS = 20  # --long: 1 + 20·8 = 161 frames, 10 s at tiny
TRAIN_SEED = 1  # SynthWorld seed of the training clips (as bench_training's chain)
TRAIN_CLIPS, TRAIN_FRAMES, SIZE = 4, 33, 64
assert TRAIN_SEED != HELD_OUT_SEED

console = Console(width=160)  # the ladder table has a column per baseline and rung


def short_curricula(steps: int | None) -> dict[Stage, TrainConfig]:
    """Every chain stage's tiny preset; with ``steps``, each phase shortened to share ``steps`` steps."""
    from worldloop.components.training.run import CHAIN

    configs = {}
    for stage in CHAIN:
        cfg = stage_preset(stage, scale="tiny")
        if steps is not None:
            per_phase = max(1, steps // len(cfg.curriculum))
            phases = tuple(CurriculumPhase(frames=p.frames, steps=per_phase) for p in cfg.curriculum)
            cfg = cfg.model_copy(update={"curriculum": phases})
        configs[stage] = cfg
    return configs


def train_ladder(root: Path, *, steps: int | None, times: dict[str, float]) -> dict[str, str]:
    """Train the chain on SynthWorld seed ``TRAIN_SEED``; returns stage name → checkpoint folder."""
    from worldloop.components.training.run import StageRun, run_chain

    started = time.perf_counter()
    data = root / "data"
    write_dataset(data, SynthConfig(size=SIZE, frames=TRAIN_FRAMES), clips=TRAIN_CLIPS, seed=TRAIN_SEED)
    long = root / "long"  # stage 4 trains on 10 s clips
    write_dataset(long, SynthConfig(size=SIZE, frames=LONG_CLIP_FRAMES), clips=2, seed=TRAIN_SEED)
    times["data"] = time.perf_counter() - started
    folders: dict[str, str] = {}
    last = time.perf_counter()

    def done(stage: Stage, run: StageRun) -> None:
        nonlocal last
        now = time.perf_counter()
        times[f"train {stage.value}"] = now - last
        folders[stage.value] = str(run.checkpoint_dir)
        console.print(f"  trained {stage.value:<12} {run.result.steps:4d} steps in {now - last:6.1f} s")
        last = now

    run_chain(
        data=str(data),
        long_data=str(long),
        out=root / "train",
        track=False,
        configs=short_curricula(steps),
        on_stage=done,
    )
    return {name: folders[name] for name in RUNGS if name in folders}


def camera_rungs(root: Path, *, steps: int | None, times: dict[str, float]) -> dict[str, str]:
    """Stage 1 on true cameras and on curated (estimated) cameras of the same worlds, same VAE, same
    steps; returns rung label → checkpoint folder."""
    from worldloop.components.curation.pipeline import run_curation
    from worldloop.components.synthworld import write_raw
    from worldloop.components.training.run import run_stage

    started = time.perf_counter()
    labelled, raw, curated = root / "data", root / "raw", root / "curated"
    cfg = SynthConfig(size=SIZE, frames=TRAIN_FRAMES)
    write_dataset(labelled, cfg, clips=TRAIN_CLIPS, seed=TRAIN_SEED)
    write_raw(raw, cfg, clips=TRAIN_CLIPS, seed=TRAIN_SEED, bad_fraction=0.0)  # the same worlds
    summary = run_curation(str(raw), str(curated), executor="local")
    times["data (labelled, raw, curation)"] = time.perf_counter() - started
    console.print(f"  curated {summary.kept_clips} clips from {summary.sources} raw pairs ({summary.camera})")
    configs = short_curricula(steps)
    last = time.perf_counter()
    vae = run_stage(configs[Stage.vae], data=str(labelled), out=root / "train" / "vae", track=False)
    times["train vae"] = time.perf_counter() - last
    rungs = {}
    for label, data in (("action·true cameras", labelled), ("action·estimated cameras", curated)):
        last = time.perf_counter()
        out = root / "train" / label.replace("·", "-").replace(" ", "-")
        run = run_stage(configs[Stage.action], data=str(data), out=out, init=vae.checkpoint_dir, track=False)
        times[f"train {label}"] = time.perf_counter() - last
        rungs[label] = str(run.checkpoint_dir)
    return rungs


def evaluate_rungs(
    rungs: Mapping[str, str], root: Path, *, clips: int, blocks: int, cases: int, times: dict[str, float]
) -> dict[str, QualityResult]:
    """``run_quality`` on each rung; the baselines are measured once per sampler and reused."""
    cache: BaselineCache = {}
    results = {}
    for name, uri in rungs.items():
        started = time.perf_counter()
        results[name] = run_quality(
            uri,
            out=root / "quality" / name,
            clips=clips,
            blocks=blocks,
            cases=cases,
            track=False,
            baselines=cache,
        )
        times[f"evaluate {name} ({results[name].payload['sampler']['kind']})"] = time.perf_counter() - started
    return results


def drift_table(results: Mapping[str, QualityResult], blocks: int) -> Table:
    """Per generated block: PSNR and camera rotation error of each rung, random weights and the frozen
    frame (the drift of a long rollout), with the first-two vs last-two block change at the bottom."""
    columns = ladder_columns(results)
    table = Table(title=f"long rollouts: PSNR (dB) and rotation error (deg) per block, {blocks} blocks")
    table.add_column("block", justify="right")
    for name in columns:
        table.add_column(f"{name} PSNR", justify="right")
    for name in columns:
        table.add_column(f"{name} rot", justify="right")

    def value(metrics: Mapping[str, float | None], key: str) -> float | None:
        v = metrics.get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    for b in range(1, blocks + 1):
        psnrs = [fmt(value(c, f"rollout.psnr.block{b}"), "psnr") for c in columns.values()]
        rots = [fmt(value(c, f"camera.rotation_deg.block{b}")) for c in columns.values()]
        table.add_row(str(b), *psnrs, *rots)

    def change(metrics: Mapping[str, float | None], kind: str) -> str:
        head = [value(metrics, f"{kind}.block{b}") for b in (1, 2)]
        tail = [value(metrics, f"{kind}.block{b}") for b in (blocks - 1, blocks)]
        if None in head or None in tail:
            return "n/a"
        return f"{sum(tail) / 2 - sum(head) / 2:+.2f}"  # type: ignore[arg-type]

    table.add_row(
        "last2−first2",
        *[change(c, "rollout.psnr") for c in columns.values()],
        *[change(c, "camera.rotation_deg") for c in columns.values()],
    )
    return table


def ladder_columns(results: Mapping[str, QualityResult]) -> dict[str, Mapping[str, float | None]]:
    """Baselines (random per sampler, frozen, the decoded I2V input, truth) first, then one column per
    rung."""
    columns: dict[str, Mapping[str, float | None]] = {}
    for result in results.values():
        columns[f"random ({result.payload['sampler']['kind']})"] = result.metrics["random"]
    first = next(iter(results.values()))
    columns["frozen"] = first.metrics["frozen"]
    inputs: list[Mapping[str, float | None]] = []  # the decoded I2V input: one column per distinct VAE
    for label, result in results.items():
        for name in INPUTS:
            metrics = result.metrics.get(name)
            if metrics is not None and metrics not in inputs:
                inputs.append(metrics)
                columns[name if len(inputs) == 1 else f"{name} ({label})"] = metrics
    columns["truth"] = first.metrics["truth"]
    for name, result in results.items():
        columns[name] = result.metrics["model"]
    return columns


def parse_rungs(items: Sequence[str]) -> dict[str, str]:
    """``LABEL=URI`` or a bare URI (labelled by its last path part)."""
    rungs = {}
    for item in items:
        label, sep, uri = item.partition("=")
        if not sep:
            label, uri = Path(item).name or item, item
        rungs[label] = uri
    return rungs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_quality", description="The quality ladder on this CPU."
    )
    parser.add_argument(
        "--rungs", nargs="+", help="LABEL=URI or URI of existing checkpoints (skips training)"
    )
    parser.add_argument("--steps", type=int, help="Steps per stage (default: the tiny stage presets)")
    parser.add_argument(
        "--cameras", action="store_true", help="Stage 1 on true vs curated (estimated) cameras instead"
    )
    parser.add_argument(
        "--long", action="store_true", help="Stage 4 vs stage 3 on long rollouts (--blocks, default 20)"
    )
    parser.add_argument("--clips", type=int, default=4, help="Held-out clips")
    parser.add_argument("--blocks", type=int, help="Generated blocks per clip (default 2; --long: 20)")
    parser.add_argument("--cases", type=int, default=6, help="InterBench cases (0: skip)")
    parser.add_argument("--root", type=Path, help="Keep the training and quality outputs here")
    args = parser.parse_args(argv)
    times: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        if args.rungs:
            rungs = parse_rungs(args.rungs)
        elif args.cameras:
            console.print(f"stage 1 on true vs estimated cameras: {TRAIN_CLIPS} worlds of seed {TRAIN_SEED}")
            rungs = camera_rungs(root, steps=args.steps, times=times)
        else:
            console.print(f"training the tiny chain on {TRAIN_CLIPS} SynthWorld clips of seed {TRAIN_SEED}")
            rungs = train_ladder(root, steps=args.steps, times=times)
        blocks = args.blocks or (LONG_BLOCKS if args.long else 2)
        if args.long and not args.rungs:
            rungs = {name: rungs[name] for name in ("distill", "long")}
        results = evaluate_rungs(
            rungs, root, clips=args.clips, blocks=blocks, cases=0 if args.long else args.cases, times=times
        )
        first = next(iter(results.values())).payload
        held = first["held_out"]
        title = (
            f"quality ladder — held-out SynthWorld seed {held['seed']}: {held['clips']} clips × "
            f"{held['blocks']} blocks, {held['interbench_cases']} InterBench cases"
        )
        if args.long:
            console.print(drift_table(results, blocks))
        else:
            console.print(ladder_table(title, ladder_columns(results), first["metric_keys"]))
        for part, seconds in times.items():
            console.print(f"  {part:<34} {seconds:7.1f} s")
        console.print(f"  {'total':<34} {time.perf_counter() - started:7.1f} s")
        if args.root:
            summary = {name: r.payload["contestants"]["model"]["metrics"] for name, r in results.items()}
            (root / "ladder.json").write_text(json.dumps({"rungs": summary, "seconds": times}, indent=1))


if __name__ == "__main__":
    main()
