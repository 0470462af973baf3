"""MLflow tracking (ARCHITECTURE.md, platform layer): experiments, the parent run of a pipeline run and
its child runs, and the per-stage run of a training stage.

One rule for where a run goes: a child of a pipeline run sits in its parent's experiment (the MLflow UI
nests children only there); a run without a parent goes to its step's own experiment
(``worldloop-training``, ``worldloop-evaluation``, ``worldloop-registry``). On the local profile new
experiments keep their artifacts beside the sqlite store under ``WORLDLOOP_HOME``, not in ``./mlruns`` of
whatever the working directory happens to be.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worldloop.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

PIPELINES = "worldloop-pipelines"
TRAINING = "worldloop-training"
EVALUATION = "worldloop-evaluation"
REGISTRY = "worldloop-registry"
PIPELINE_TAG = "worldloop.pipeline"
PARENT_TAG = "mlflow.parentRunId"


def tracking_client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.resolved_mlflow_uri)


def local_artifacts(settings: Settings) -> str:
    """Where the local profile keeps MLflow artifacts: beside the sqlite store under home."""
    return (settings.home / "mlartifacts").resolve().as_uri()


def experiment_id(
    client: MlflowClient, name: str, *, settings: Settings, parent_run_id: str | None = None
) -> str:
    """The experiment a run belongs in: its parent's, else ``name`` (created when missing)."""
    from mlflow.exceptions import MlflowException

    if parent_run_id:
        try:
            return str(client.get_run(parent_run_id).info.experiment_id)
        except MlflowException as err:
            raise ValueError(
                f"parent run {parent_run_id} not found in {settings.resolved_mlflow_uri}"
            ) from err
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None if settings.mlflow_uri else local_artifacts(settings)
    return str(client.create_experiment(name, artifact_location=location))


def parent_tags(parent_run_id: str | None) -> dict[str, str]:
    return {PARENT_TAG: parent_run_id} if parent_run_id else {}


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as ``a.b.c`` keys with string values (MLflow's 500-character limit kept)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out |= flatten_params(value, name)
        else:
            out[name] = str(value)[:500]
    return out


# -- pipeline runs: a parent per run, a child per step -------------------------------------------------
def start_parent(pipeline: str, params: Mapping[str, object], *, settings: Settings | None = None) -> str:
    """Open the parent run of one pipeline run; returns its id (a pipeline parameter)."""
    settings = settings or get_settings()
    client = tracking_client(settings)
    run = client.create_run(
        experiment_id(client, PIPELINES, settings=settings),
        run_name=f"pipeline-{pipeline}",
        tags={PIPELINE_TAG: pipeline},
    )
    for key, value in sorted(params.items()):
        client.log_param(run.info.run_id, key, str(value))
    return str(run.info.run_id)


def finish_parent(
    run_id: str, *, ok: bool, tags: Mapping[str, str] | None = None, settings: Settings | None = None
) -> None:
    client = tracking_client(settings or get_settings())
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


@contextmanager
def child_run(
    parent_run_id: str, name: str, params: Mapping[str, object], *, settings: Settings | None = None
) -> Iterator[str]:
    """A child run of ``parent_run_id`` around one step; yields its id. Without a parent (``""``) the
    step is not tracked and ``""`` is yielded."""
    if not parent_run_id:
        yield ""
        return
    settings = settings or get_settings()
    client = tracking_client(settings)
    experiment = experiment_id(client, PIPELINES, settings=settings, parent_run_id=parent_run_id)
    run = client.create_run(experiment, run_name=name, tags=parent_tags(parent_run_id))
    run_id = str(run.info.run_id)
    for key, value in sorted(params.items()):
        client.log_param(run_id, key, str(value))
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)


def log_metrics(run_id: str, metrics: Mapping[str, float], *, settings: Settings | None = None) -> None:
    if run_id:
        client = tracking_client(settings or get_settings())
        for key, value in sorted(metrics.items()):
            client.log_metric(run_id, key, float(value))


# -- a step's own run (fluent API: system metrics, artifacts) --------------------------------------------
@contextmanager
def step_run(
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any],
    settings: Settings,
    parent_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[str]:
    """An active MLflow run (``mlflow.log_*`` go to it) in ``experiment`` or beside its parent; yields the
    run id, ends FINISHED, or FAILED on an exception."""
    import mlflow

    mlflow.set_tracking_uri(settings.resolved_mlflow_uri)
    client = tracking_client(settings)
    exp = experiment_id(client, experiment, settings=settings, parent_run_id=parent_run_id)
    if system_metrics:  # CPU / memory (and GPU where present) sampled beside the training metrics
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
    run = mlflow.start_run(
        experiment_id=exp,
        run_name=run_name,
        tags=parent_tags(parent_run_id),
        log_system_metrics=system_metrics,
    )
    try:
        mlflow.log_params(flatten_params(params))
        yield str(run.info.run_id)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


class StageTracker:
    """The MLflow run of one training stage: config as params, metrics per step (``log_metrics`` is the
    trainer's ``on_metrics``), a loss-curve PNG and the checkpoint URI at the end."""

    def __init__(
        self,
        *,
        settings: Settings,
        run_name: str,
        params: Mapping[str, Any],
        parent_run_id: str | None = None,
    ) -> None:
        self.settings, self.run_name, self.params = settings, run_name, params
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self._run: Any = None

    def __enter__(self) -> StageTracker:
        self._run = step_run(
            TRAINING,
            self.run_name,
            params=self.params,
            settings=self.settings,
            parent_run_id=self.parent_run_id,
            system_metrics=True,
        )
        self.run_id = self._run.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._run.__exit__(*exc)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()}, step=step)

    def log_file(self, path: str | Path) -> None:
        import mlflow

        mlflow.log_artifact(str(path))

    def finish(self, *, losses: list[float], first_step: int, checkpoint: str | None) -> None:
        """Loss curve PNG (every step of this run) and the checkpoint location."""
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "loss_curve.png"
            plot_curve(losses, first_step=first_step, title=self.run_name, path=path)
            mlflow.log_artifact(str(path))
        if checkpoint:
            mlflow.set_tag("checkpoint_uri", checkpoint)


def plot_curve(values: list[float], *, first_step: int, title: str, path: Path, ylabel: str = "loss") -> Path:
    """A line plot of ``values`` at steps ``first_step + 1 …`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(first_step + 1, first_step + 1 + len(values)), values, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
