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
    twins: bool = typer.Option(
        False,
        "--twins",
        help="Labelled mode: also write each clip's counterfactual twin (same shot, no event, no "
        "instruction) as NAME-twin.",
    ),
) -> None:
    kinds = tuple(EventKind(k.strip()) for k in events.split(",") if k.strip()) or tuple(EventKind)
    cfg = SynthConfig(size=size, frames=frames, fps=fps, event_kinds=kinds, twins=twins)
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
            tally = Counter(
                r.events[0].kind if r.events else "twin" if r.name.endswith("-twin") else "no event"
                for r in records
            )
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
