"""Cluster runs: compile, upload to the KFP API server (``kfp.Client``), start a run and wait for it.

The pipeline is uploaded under a name that carries the digest of its IR, so an unchanged pipeline is
uploaded once and every run names the exact version it ran.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from worldloop.pipelines.catalog import PARENT, builder, compile_pipeline, resolve_arguments
from worldloop.pipelines.cluster import ClusterConfig
from worldloop.platform import tracking
from worldloop.settings import Settings, get_settings

log = logging.getLogger(__name__)
EXPERIMENT = "worldloop"


@dataclass(frozen=True)
class ClusterRun:
    pipeline: str
    run_id: str
    parent_run_id: str
    state: str


def submit(
    name: str,
    given: dict[str, str | int | float | bool],
    *,
    host: str,
    timeout_s: int = 24 * 3600,
    poll_s: int = 5,
    cluster: ClusterConfig | None = None,
    settings: Settings | None = None,
) -> ClusterRun:
    """Run pipeline ``name`` on the KFP API server at ``host`` and wait; a run that does not succeed
    raises RuntimeError with its state and error."""
    import kfp

    settings = settings or get_settings()
    arguments = resolve_arguments(builder(name)(), given)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", cluster=cluster)
        digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
        client = kfp.Client(host=host)
        pipeline_name = f"worldloop-{name}-{digest}"
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(str(package), pipeline_name=pipeline_name).pipeline_id
    versions = client.list_pipeline_versions(pipeline_id).pipeline_versions or []
    if not versions:
        raise RuntimeError(f"KFP pipeline {pipeline_name} ({pipeline_id}) has no version on {host}")
    experiment = client.create_experiment(EXPERIMENT)
    parent = tracking.start_parent(name, arguments, settings=settings)
    arguments[PARENT] = parent
    run = client.run_pipeline(
        experiment.experiment_id,
        f"{name}-{parent[:8]}",
        params=arguments,
        pipeline_id=pipeline_id,
        version_id=versions[0].pipeline_version_id,
    )
    log.info("KFP run %s of %s on %s (MLflow parent run %s)", run.run_id, pipeline_name, host, parent)
    try:
        done = client.wait_for_run_completion(run.run_id, timeout=timeout_s, sleep_duration=poll_s)
    except BaseException:
        tracking.finish_parent(parent, ok=False, settings=settings)
        raise
    state = str(done.state)
    ok = state == "SUCCEEDED"
    tracking.finish_parent(parent, ok=ok, tags={"worldloop.kfp_run": str(run.run_id)}, settings=settings)
    if not ok:
        why = f": {done.error.message}" if done.error is not None and done.error.message else ""
        raise RuntimeError(f"KFP run {run.run_id} of {name} ended {state}{why} ({host})")
    return ClusterRun(name, str(run.run_id), parent, state)
