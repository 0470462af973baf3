"""``worldloop eval``: InterBench on a model, and a side-by-side comparison of two score files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
evaluate = typer.Typer(help="InterBench and general video metrics.", no_args_is_help=True)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


@evaluate.command(
    "interbench", help="Score a model on InterBench; writes report.html, radar.png, scores.json."
)
def eval_interbench(
    model: str = typer.Option(..., "--model", help="Checkpoint folder (local or s3://) or preset:NAME."),
    out: Path = typer.Option(..., "--out", help="Report directory."),
    cases: int = typer.Option(None, "--cases", min=1, help="Number of cases (default: the whole suite)."),
    suite: Path = typer.Option(None, "--suite", help="Suite folder (default: the shipped SynthWorld suite)."),
    judge: str = typer.Option("synthworld", "--judge", help="synthworld | vlm"),
    judge_url: str = typer.Option(None, "--judge-url", help="OpenAI-compatible endpoint for --judge vlm."),
    judge_model: str = typer.Option(None, "--judge-model", help="Model name at --judge-url."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed of the generated videos."),
    i3d: Path = typer.Option(
        None, "--i3d", help="Kinetics-400 I3D safetensors file: also report FVD with the published network."
    ),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow."),
) -> None:
    from worldloop.components.evaluation.interbench import build_judge, run_interbench

    chosen = build_judge(judge, url=judge_url, model=judge_model)
    with Progress(
        TextColumn("InterBench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("cases", total=None)
        result = run_interbench(
            model,
            out=out,
            suite=suite,
            cases=cases,
            judge=chosen,
            seed=seed,
            i3d=i3d,
            track=not no_track,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    dims = list(result.interbench)
    rows = [["all cases", *(_fmt(result.interbench[d]) for d in dims)]]
    rows += [[cat, *(_fmt(s[d]) for d in dims)] for cat, s in result.per_category.items()]
    console.print(_table("InterBench", ["", *dims], rows))
    if result.multi_turn:
        multi = result.multi_turn
        kept = multi["persistence_by_turn"]
        turns = [
            [f"turn {n}", *(_fmt(s[d]) for d in dims), _fmt(kept.get(n))] for n, s in multi["turns"].items()
        ]
        title = f"Multi-turn ({multi['cases']} cases, persistence {_fmt(multi['persistence'])})"
        console.print(_table(title, ["", *dims, "persistence"], turns))
    console.print(
        _table("General metrics", ["metric", "mean"], [[k, _fmt(v)] for k, v in result.general.items()])
    )
    if result.judge_accuracy is not None:
        trusted = "trusted" if result.judge_accuracy >= 0.95 else "NOT trusted (< 0.95)"
        console.print(f"SynthWorld judge held-out accuracy: {result.judge_accuracy:.3f} ({trusted})")
    console.print(f"report: {result.out / 'report.html'}")


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scores.json (pass the file or its report folder)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if "interbench" not in data or "general" not in data:
        raise ValueError(f"{path} is not an InterBench scores.json")
    return dict(data)


@evaluate.command("compare", help="Side-by-side table of two InterBench score files (or report folders).")
def eval_compare(a: Path = typer.Argument(...), b: Path = typer.Argument(...)) -> None:
    left, right = (_load(p / "scores.json" if p.is_dir() else p) for p in (a, b))
    rows = []
    for section in ("interbench", "general"):
        for key in dict.fromkeys([*left[section], *right[section]]):
            x, y = left[section].get(key), right[section].get(key)
            delta = _fmt(y - x) if isinstance(x, float) and isinstance(y, float) else "—"
            rows.append([f"{section}.{key}", _fmt(x), _fmt(y), delta])
    console.print(
        _table("InterBench comparison", ["", str(left["model"]), str(right["model"]), "B − A"], rows)
    )


@evaluate.command(
    "quality",
    help="The quality ladder: a model vs random weights vs the frozen first frame on held-out SynthWorld; "
    "writes quality.json, block_psnr.png and side-by-side samples.",
)
def eval_quality(
    model: str = typer.Option(
        ..., "--model", help="preset:NAME, a checkpoint folder (local or s3://) or models:/NAME@ALIAS."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    clips: int = typer.Option(4, "--clips", min=1, help="Held-out SynthWorld clips."),
    blocks: int = typer.Option(2, "--blocks", min=1, help="Generated blocks per clip."),
    cases: int = typer.Option(6, "--cases", min=0, help="InterBench cases of the held-out suite (0: skip)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (and the random-weight baseline's)."),
    sampler: str = typer.Option(
        "auto", "--sampler", help="auto | rollout | teacher (auto: teacher for stage action/instruction)."
    ),
    parent_run_id: str = typer.Option(None, "--parent-run-id", help="Log as a child of this MLflow run."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow."),
) -> None:
    from worldloop.components.evaluation.quality import run_quality
    from worldloop.components.evaluation.quality.report import ladder_table
    from worldloop.platform.uri import ModelURI

    uri = ModelURI.parse(model)  # a bad --model is one line and exit 2, before anything loads
    with Progress(
        TextColumn("quality"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("videos", total=None)
        result = run_quality(
            str(uri),
            out=out,
            clips=clips,
            blocks=blocks,
            cases=cases,
            seed=seed,
            sampler=sampler,
            track=not no_track,
            parent_run_id=parent_run_id,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    payload = result.payload
    held = payload["held_out"]
    title = (
        f"{payload['model']} ({payload['sampler']['kind']}) on held-out SynthWorld seed {held['seed']}: "
        f"{held['clips']} clips × {held['blocks']} blocks, {held['interbench_cases']} InterBench cases"
    )
    console.print(ladder_table(title, result.metrics, payload["metric_keys"]))
    console.print(f"{payload['seconds']['total']:.1f} s; report: {result.out / 'quality.json'}")
