"""MLflow runs of a pipeline run: one parent run, opened before the pipeline starts, and a child run per
step (tag ``mlflow.parentRunId``; the training, evaluation and registry steps open theirs in library
code with ``parent_run_id``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from worldloop.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

EXPERIMENT = "worldloop-pipelines"
PIPELINE_TAG = "worldloop.pipeline"


def _client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.resolved_mlflow_uri)


def _experiment_id(client: MlflowClient, settings: Settings) -> str:
    from worldloop.components.training.run import local_artifacts

    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return str(found.experiment_id)
    location = None if settings.mlflow_uri else local_artifacts(settings)
    return str(client.create_experiment(EXPERIMENT, artifact_location=location))


def start_parent(pipeline: str, params: Mapping[str, object], *, settings: Settings | None = None) -> str:
    """Open the parent run of one pipeline run; returns its id (a pipeline parameter)."""
    settings = settings or get_settings()
    client = _client(settings)
    run = client.create_run(
        _experiment_id(client, settings), run_name=f"pipeline-{pipeline}", tags={PIPELINE_TAG: pipeline}
    )
    for key, value in sorted(params.items()):
        client.log_param(run.info.run_id, key, str(value))
    return str(run.info.run_id)


def finish_parent(
    run_id: str, *, ok: bool, tags: Mapping[str, str] | None = None, settings: Settings | None = None
) -> None:
    client = _client(settings or get_settings())
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


@contextmanager
def child_run(
    parent_run_id: str, name: str, params: Mapping[str, object], *, settings: Settings | None = None
) -> Iterator[str]:
    """A child run of ``parent_run_id`` (beside it, in its experiment) around one step; yields its id.
    Without a parent (``""``) the step is not tracked and ``""`` is yielded."""
    if not parent_run_id:
        yield ""
        return
    client = _client(settings or get_settings())
    experiment = client.get_run(parent_run_id).info.experiment_id
    run = client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": parent_run_id})
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
        client = _client(settings or get_settings())
        for key, value in sorted(metrics.items()):
            client.log_metric(run_id, key, float(value))
