"""``worldloop pipeline``: run a pipeline locally (``kfp.local``) or on a KFP cluster, or compile it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()
pipeline = typer.Typer(
    help="Run, compile or submit Kubeflow pipelines (full, curation, evaluation).", no_args_is_help=True
)
_NAME = typer.Argument(..., help="full | curation | evaluation")


def parse_params(items: list[str]) -> dict[str, str | int | float | bool]:
    """``KEY=VALUE`` pairs (values are converted to the parameter's type later)."""
    out: dict[str, str | int | float | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


@pipeline.command("run", help="Run a pipeline locally (kfp.local) or on a KFP cluster with --host.")
def pipeline_run(
    name: str = _NAME,
    preset: str = typer.Option(None, "--preset", help="Model/training scale (full: tiny | small | a14b)."),
    params: list[str] = typer.Option([], "--param", "-p", help="Pipeline parameter KEY=VALUE (repeatable)."),
    host: str = typer.Option(None, "--host", help="KFP API server URL; omit to run locally."),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Local runs: skip steps whose inputs are unchanged."
    ),
    timeout: int = typer.Option(24 * 3600, "--timeout", min=1, help="--host: seconds to wait for the run."),
) -> None:
    from worldloop.settings import get_settings

    settings = get_settings()
    given = parse_params(params)
    if preset is not None:
        given["preset"] = preset
    target = host or settings.kfp_host
    if target:
        from worldloop.pipelines.cluster import load_cluster_config
        from worldloop.pipelines.submit import submit

        cluster = load_cluster_config(settings.pipeline_cluster_config)
        done = submit(name, given, host=target, timeout_s=timeout, cluster=cluster, settings=settings)
        console.print(f"KFP run {done.run_id} of {name}: {done.state} ({target})")
        console.print(f"MLflow parent run {done.parent_run_id} in {settings.resolved_mlflow_uri}")
        return
    from worldloop.pipelines.local import run_local

    run = run_local(name, given, cache=cache, settings=settings)
    reused = f"; {run.steps_cached} step(s) skipped (unchanged inputs: outputs from the cache)"
    console.print(f"pipeline {name}: SUCCEEDED{reused}")
    for key, value in sorted(run.outputs.items()):
        console.print(f"  output {key}: {getattr(value, 'uri', value)}")
    console.print(f"MLflow parent run {run.parent_run_id} in {settings.resolved_mlflow_uri}")


@pipeline.command("compile", help="Compile a pipeline to reproducible IR YAML (with the cluster settings).")
def pipeline_compile(
    name: str = _NAME, out: Path = typer.Option(..., "--out", help="IR YAML file to write.")
) -> None:
    from worldloop.pipelines.catalog import compile_pipeline
    from worldloop.pipelines.cluster import load_cluster_config
    from worldloop.settings import get_settings

    cluster = load_cluster_config(get_settings().pipeline_cluster_config)
    console.print(f"{name} → {compile_pipeline(name, out, cluster=cluster)}")
