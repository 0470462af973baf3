"""``worldloop train``: run one training stage (resumes from ``--out`` when it holds a checkpoint) in
this process, under ``torchrun``, or on N Ray Train workers (``--workers``/``--ray-address``: what a
pipeline's training RayJob runs)."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worldloop import storage
from worldloop.config_io import ConfigError, load_yaml, validate_config

if TYPE_CHECKING:
    from worldloop.model.train.config import TrainConfig

console = Console()
STAGES = {"vae": "vae", "action": "action", "sft": "instruction", "distill": "distill", "extend": "long"}
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


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
    config: str = typer.Option(
        None, "--config", help="TrainConfig YAML, a file or s3:// URI (overrides the preset)."
    ),
    steps: int = typer.Option(None, "--steps", min=1, help="Stop after this many more steps."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow."),
    parent_run_id: str = typer.Option(
        None, "--parent-run-id", help="MLflow run to log under (a pipeline run's parent run)."
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Ray Train workers (ranks); > 1 trains on Ray (see --ray-address)."
    ),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="Train on this Ray cluster (host:port, ray://host:10001 or auto). Default with --workers > 1: "
        "the Ray job's cluster (RAY_ADDRESS), else a local Ray.",
    ),
    gpu: bool = typer.Option(False, "--gpu", help="Ray: one GPU per worker (NCCL); default CPU (gloo)."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", min=0.01, help="Ray: CPUs per worker."),
    placement: str = typer.Option("PACK", "--placement", help=f"Ray: {' | '.join(PLACEMENTS)}."),
    max_failures: int = typer.Option(
        0, "--max-failures", min=0, help="Ray: restarts of a failed worker group (each resumes)."
    ),
    result: str = typer.Option(
        None, "--result", help="Ray: write the run's summary (JSON) here, a file or s3:// URI."
    ),
) -> None:
    from worldloop.model.train.config import stage_preset

    if stage not in STAGES:
        raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    cfg = _load_config(config) if config else stage_preset(STAGES[stage], scale=preset)
    if cfg.stage.value != STAGES[stage]:
        raise ValueError(f"--config is for stage {cfg.stage.value}, not {stage}")
    if workers > 1 or ray_address:
        _train_on_ray(
            cfg,
            stage=stage,
            data=data,
            out=out,
            init=init,
            steps=steps,
            track=not no_track,
            parent_run_id=parent_run_id,
            workers=workers,
            address=ray_address,
            gpu=gpu,
            cpus=cpus_per_worker,
            placement=placement,
            max_failures=max_failures,
            result=result,
        )
        return
    ray_only = {"--gpu": gpu, "--cpus-per-worker": cpus_per_worker != 1.0, "--placement": placement != "PACK"}
    ray_only |= {"--max-failures": max_failures > 0, "--result": bool(result)}
    if any(ray_only.values()):
        given = ", ".join(k for k, v in ray_only.items() if v)
        raise ValueError(f"{given}: for Ray runs only (--workers > 1 or --ray-address)")
    from worldloop.components.training.run import run_stage

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
            parent_run_id=parent_run_id,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    r = run.result
    _report(stage, r.steps, r.losses, r.seconds, str(r.checkpoint), run.mlflow_run_id)


def _load_config(uri: str) -> TrainConfig:
    """The stage's YAML config from a file or an ``s3://`` URI (what a RayJob's entrypoint is given)."""
    from worldloop.model.train.config import TrainConfig

    if storage.scheme_of(uri) is storage.Scheme.local:
        return load_yaml(TrainConfig, storage.as_local_path(uri))
    data = yaml.safe_load(storage.read_bytes(uri).decode("utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
    return validate_config(TrainConfig, data, source=uri)


def _train_on_ray(
    cfg: TrainConfig,
    *,
    stage: str,
    data: list[str] | None,
    out: str,
    init: str | None,
    steps: int | None,
    track: bool,
    parent_run_id: str | None,
    workers: int,
    address: str | None,
    gpu: bool,
    cpus: float,
    placement: str,
    max_failures: int,
    result: str | None,
) -> None:
    from worldloop.components.training.ray_train import RayWorkers, train_on_ray

    if placement not in PLACEMENTS:
        raise ValueError(f"--placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    run = train_on_ray(
        cfg,
        workers=RayWorkers(
            num_workers=workers,
            use_gpu=gpu,
            cpus_per_worker=cpus,
            placement=placement,  # type: ignore[arg-type]
            max_failures=max_failures,
        ),
        data=data or None,
        out=out,
        init=init,
        max_steps=steps,
        track=track,
        parent_run_id=parent_run_id,
        address=address,
    )
    if result:
        storage.write_bytes(result, run.model_dump_json(indent=1).encode())
    _report(stage, run.steps, run.losses, run.seconds, run.checkpoint, run.mlflow_run_id)
    console.print(f"ranks on {len(set(run.nodes))} Ray node(s): {', '.join(n[:8] for n in run.nodes)}")


def _report(
    stage: str,
    steps: int,
    losses: list[float],
    seconds: float,
    checkpoint: str | None,
    mlflow_run: str | None,
) -> None:
    k = max(1, len(losses) // 5)
    trend = (
        f"loss {statistics.mean(losses[:k]):.4f} → {statistics.mean(losses[-k:]):.4f}"
        if losses
        else "no steps run"
    )
    console.print(
        f"stage {stage}: step {steps} ({len(losses)} this run, {seconds:.1f} s), "
        f"{trend}; checkpoint {checkpoint}" + (f"; MLflow run {mlflow_run}" if mlflow_run else "")
    )
