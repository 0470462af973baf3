"""``worldloop synth`` and ``worldloop demo``."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worldloop.components.synthworld import EventKind, SynthConfig, write_dataset, write_raw
from worldloop.settings import get_settings

console = Console()
EVENT_NAMES = ", ".join(k.value for k in EventKind)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def synth(
    out: Path = typer.Option(..., "--out", help="Output directory."),
    clips: int = typer.Option(8, "--clips", min=1, help="Number of clips."),
    frames: int = typer.Option(33, "--frames", min=2, help="Frames per clip."),
    size: int = typer.Option(128, "--size", help="Frame width and height (even, 32–512)."),
    seed: int = typer.Option(0, "--seed", help="Same seed ⇒ byte-identical frames."),
    fps: int = typer.Option(16, "--fps", help="Frame rate of the written videos."),
    events: str = typer.Option(
        "",
        "--events",
        help=f"Comma-separated event kinds (default: all). {EVENT_NAMES}",
    ),
    raw: bool = typer.Option(
        False, "--raw", help="Write unstructured MP4 + caption pairs with bad clips mixed in."
    ),
    bad_fraction: float = typer.Option(
        0.4, "--bad-fraction", help="Share of deliberately bad items with --raw."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes (labelled mode)."),
) -> None:
    kinds = tuple(EventKind(k.strip()) for k in events.split(",") if k.strip()) or tuple(EventKind)
    cfg = SynthConfig(size=size, frames=frames, fps=fps, event_kinds=kinds)
    started = time.perf_counter()
    with _progress() as bar:
        task = bar.add_task("raw pairs" if raw else "clips", total=clips)
        if raw:
            truths = write_raw(
                out,
                cfg,
                clips=clips,
                seed=seed,
                bad_fraction=bad_fraction,
                progress=lambda _: bar.advance(task),
            )
            tally = Counter(t.defect.value for t in truths)
        else:
            records = write_dataset(
                out, cfg, clips=clips, seed=seed, workers=workers, progress=lambda _: bar.advance(task)
            )
            tally = Counter(r.events[0].kind if r.events else "no event" for r in records)
    elapsed = time.perf_counter() - started
    table = Table(title=f"SynthWorld → {out}")
    table.add_column("defect" if raw else "event")
    table.add_column("clips", justify="right")
    for name, count in sorted(tally.items()):
        table.add_row(name, str(count))
    console.print(table)
    console.print(
        f"{clips} clips × {frames} frames at {size}×{size} in {elapsed:.1f} s "
        f"({clips * frames / elapsed:.0f} frames/s incl. encoding) → {out.resolve()}"
    )


def demo(
    clips: int = typer.Option(
        6, "--clips", min=1, help="Labelled SynthWorld clips (twice as many raw pairs)."
    ),
    max_steps: int = typer.Option(4, "--max-steps", min=1, help="Optimiser steps per training stage."),
    eval_cases: int = typer.Option(3, "--eval-cases", min=2, help="InterBench cases (a suite of this size)."),
) -> None:
    """The ``full`` pipeline locally (kfp.local, tiny preset, short stages) → register → approve and
    promote the version as the local demo approver → where everything is and how to play it.

    Re-running skips the steps whose inputs are unchanged (the local pipeline cache) and registers,
    approves and promotes a new version.
    """
    from worldloop.components.registry import approve, promote, show
    from worldloop.components.registry.gate import DIMENSIONS
    from worldloop.pipelines.local import run_local
    from worldloop.settings import DEMO_APPROVER

    settings = get_settings()
    arguments: dict[str, str | int | float | bool] = {
        "preset": "tiny",
        "clips": clips,
        "raw_clips": clips * 2,
        "max_steps": max_steps,
        "eval_cases": eval_cases,
        "suite_cases": eval_cases,
        "curation_executor": "local",
    }
    console.print(
        "[bold]Pipeline full[/bold] (kfp.local): SynthWorld + curation → stages 1–4 → InterBench → register"
    )
    started = time.perf_counter()
    run = run_local("full", arguments, settings=settings)
    version = int(str(run.outputs["Output"]))
    cached = f", {run.steps_cached} step(s) skipped (unchanged inputs: outputs from the cache)"
    console.print(
        f"pipeline finished in {time.perf_counter() - started:.0f} s{cached}; registered version {version}"
    )
    approve(version, reason="make demo: tiny local pipeline run", identity=DEMO_APPROVER, settings=settings)
    decision = promote(version, identity=DEMO_APPROVER, settings=settings)
    info = show(version, settings=settings)
    table = Table(title=f"InterBench of v{version}", caption=", ".join(info.aliases))
    table.add_column("dimension")
    table.add_column("score", justify="right")
    for dim in DIMENSIONS:
        value = (info.scores or {}).get(dim)
        table.add_row(dim, "—" if value is None else f"{value:.3f}")
    console.print(table)
    before = "none" if decision.champion_before is None else f"v{decision.champion_before}"
    console.print(
        f"{DEMO_APPROVER} approved and promoted v{decision.champion_after} to champion (was {before})"
    )
    console.print(
        f"MLflow (pipeline run {run.parent_run_id}, steps as child runs): {settings.resolved_mlflow_uri}"
    )
    console.print(f"  browse it: mlflow ui --backend-store-uri {settings.resolved_mlflow_uri}")
    console.print(f"Pipeline outputs (kfp.local): {(settings.home / 'kfp' / 'outputs').resolve()}")
    champion = f"models:/{settings.registered_model}@champion"
    console.print(f"Serve and play the champion: worldloop serve run --model {champion}")
    console.print("  then open http://127.0.0.1:8000/ in a browser (W/A/S/D + mouse, type an instruction)")
