"""``worldloop curate``: raw text-video pairs → sharded interactive dataset."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worldloop.components.curation.captioning import CaptionerConfig, ChatCaptionerConfig
from worldloop.components.curation.config import CurationConfig
from worldloop.components.curation.pipeline import CurationSummary, Executor, run_curation
from worldloop.config_io import load_yaml

console = Console()


def summary_table(summary: CurationSummary) -> Table:
    table = Table(title=f"curation → {summary.out}")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_row("sources", str(summary.sources))
    table.add_row("kept clips", str(summary.kept_clips))
    table.add_row("kept frames", str(summary.kept_frames))
    table.add_row("with an interaction", str(summary.interactions))
    for source, n in sorted(summary.camera.items()):
        table.add_row(f"camera from {source}", str(n))
    for reason, n in sorted(summary.dropped.items()):
        table.add_row(f"dropped: {reason}", str(n))
    table.add_row("shards (reused)", f"{summary.shards} ({summary.shards_skipped})")
    return table


def curate(
    input: str = typer.Option(..., "--input", help="Directory or s3:// prefix of MP4 + caption pairs."),
    out: str = typer.Option(..., "--out", help="Output directory or s3:// prefix (re-running resumes)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Shards processed in parallel (Ray Data)."),
    executor: str = typer.Option("ray", "--executor", help="ray (local or WORLDLOOP_RAY_ADDRESS) | local."),
    config: Path = typer.Option(None, "--config", help="CurationConfig YAML (defaults otherwise)."),
    captioner_endpoint: str = typer.Option(
        None, "--captioner-endpoint", help="OpenAI-compatible /v1 URL of a VLM; default: offline rules."
    ),
    captioner_model: str = typer.Option(None, "--captioner-model", help="Model name for the endpoint."),
) -> None:
    cfg = load_yaml(CurationConfig, config) if config else CurationConfig()
    if captioner_endpoint:
        if not captioner_model:
            raise ValueError("--captioner-endpoint needs --captioner-model")
        chat = ChatCaptionerConfig(endpoint=captioner_endpoint, model=captioner_model)
        cfg = cfg.model_copy(
            update={"captioner": CaptionerConfig(kind="chat", chat=chat, fallback_to_rules=True)}
        )
    if executor not in ("ray", "local"):
        raise ValueError(f"--executor must be ray or local, got {executor!r}")
    with Progress(
        TextColumn("shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("shards", total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = run_curation(
            input,
            out,
            cfg,
            workers=workers,
            executor=cast(Executor, executor),
            on_shard=report,
        )
    console.print(summary_table(summary))
    console.print(f"{summary.kept_clips} clips in {summary.seconds:.1f} s → {out}")
