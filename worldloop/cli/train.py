"""``worldloop train``: run one training stage (resumes from ``--out`` when it holds a checkpoint)."""

from __future__ import annotations

import statistics
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worldloop.config_io import load_yaml

console = Console()
STAGES = {"vae": "vae", "action": "action", "sft": "instruction", "distill": "distill", "extend": "long"}


def train(
    stage: str = typer.Option(..., "--stage", help="vae | action | sft | distill | extend"),
    preset: str = typer.Option("tiny", "--preset", help="Model/training scale: tiny | small | a14b."),
    data: list[str] = typer.Option(
        None,
        "--data",
        help="A dataset (folder or s3:// with dataset.json, from worldloop synth or curate), as URI or "
        "URI=WEIGHT; repeat to mix datasets by weight. Default: the config's data list.",
    ),
    out: str = typer.Option(..., "--out", help="Checkpoint folder or s3:// prefix (re-running resumes)."),
    init: str = typer.Option(
        None,
        "--init",
        help="Checkpoints of the previous stage (folder or s3://), or the released Wan VAE (safetensors "
        "file or diffusers folder) to skip stage vae.",
    ),
    config: Path = typer.Option(None, "--config", help="TrainConfig YAML (overrides the preset)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Stop after this many more steps."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow."),
) -> None:
    from worldloop.components.training.run import run_stage
    from worldloop.model.train.config import TrainConfig, stage_preset

    if stage not in STAGES:
        raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    cfg = load_yaml(TrainConfig, config) if config else stage_preset(STAGES[stage], scale=preset)
    if cfg.stage.value != STAGES[stage]:
        raise ValueError(f"--config is for stage {cfg.stage.value}, not {stage}")
    with Progress(
        TextColumn(f"stage {stage}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("steps", total=None)
        run = run_stage(
            cfg,
            data=data or None,
            out=out,
            init=init,
            max_steps=steps,
            track=not no_track,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    r = run.result
    k = max(1, len(r.losses) // 5)
    trend = (
        f"loss {statistics.mean(r.losses[:k]):.4f} → {statistics.mean(r.losses[-k:]):.4f}"
        if r.losses
        else "no steps run"
    )
    console.print(
        f"stage {stage}: step {r.steps} ({len(r.losses)} this run, {r.seconds:.1f} s), "
        f"{trend}; checkpoint {r.checkpoint}"
        + (f"; MLflow run {run.mlflow_run_id}" if run.mlflow_run_id else "")
    )
