"""A pipeline step's training stage as a KubeRay RayJob: the job's pods train, the step waits.

The pipeline, compiled with a cluster config that asks for it (``ClusterConfig.train_job``), hands
each training step a :class:`RayJobTemplate`: a RayJob complete but for its name and the stage's
arguments. The step (:func:`train_as_rayjob`)

1. names the remote data and ``init`` its inputs are (KFP downloads artifacts to ``/s3/…`` or
   ``/minio/…`` mounts of their S3 URIs; the job's pods read the URIs), and names the job after its
   inputs, so a retried step finds the same job and the same folder;
2. writes the stage's config into the job's folder under the template's ``output_root`` and fills
   the entrypoint: ``worldloop train --config … --data … --out FOLDER/checkpoints --result …`` after
   the template's Ray Train part (``--workers``, ``--gpu``, …: :mod:`.ray_train`);
3. runs the job (:func:`worldloop.k8s.rayjob.run_rayjob`): streams its log into the step's, waits,
   and fails with KubeRay's message and the log's last lines;
4. pulls the final checkpoint into the step's output artifact, for the next stage and the registry.

Checkpoints are written to ``s3://`` as they are made, so a job submitted again — the same step
retried — resumes where the last one stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes

from worldloop import storage
from worldloop.components.training.job_template import STAGE_LABEL, RayJobTemplate
from worldloop.components.training.ray_train import RayStageRun
from worldloop.config_io import dump_yaml
from worldloop.data import DataSource, resolve_sources
from worldloop.k8s.rayjob import run_rayjob
from worldloop.model.train.config import Stage, TrainConfig
from worldloop.platform.checkpoints import CheckpointMirror
from worldloop.settings import Settings, get_settings

log = logging.getLogger(__name__)

# ``worldloop train --stage`` names (worldloop.cli.train.STAGES, the other way round)
COMMAND_STAGES = {
    Stage.vae: "vae",
    Stage.action: "action",
    Stage.instruction: "sft",
    Stage.distill: "distill",
    Stage.long: "extend",
}
# KFP's local mounts of remote artifacts (kfp.dsl.types.artifact_types): MinIO speaks S3
_MOUNTS = {"/s3/": "s3://", "/minio/": "s3://"}


def remote_uri(path: str) -> str:
    """The URI a job's pod reads ``path`` from: an ``s3://`` URI as is, KFP's ``/s3/B/K`` or
    ``/minio/B/K`` mount of an artifact as ``s3://B/K``; any other local path as is (it must then be
    on a volume every pod of the job mounts at the same path)."""
    if storage.scheme_of(path) is not storage.Scheme.local:
        return path
    for mount, scheme in _MOUNTS.items():
        if path.startswith(mount):
            return scheme + path[len(mount) :]
    if path.startswith("/gcs/"):
        raise ValueError(
            f"{path}: a GCS artifact, which the job's pods cannot read; put the pipeline root on the "
            "platform's S3 (s3://… or minio://…)"
        )
    return path


def job_name(stage: Stage, identity: dict[str, Any]) -> str:
    """``wl-STAGE-DIGEST``: the same inputs give the same job (a retried step follows or resumes it)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"wl-{stage.value}-{digest}"


def job_manifest(template: RayJobTemplate, *, name: str, stage: Stage, args: list[str]) -> dict[str, Any]:
    """The template's RayJob named ``name``, labelled with ``stage``, its entrypoint ending in ``args``."""
    manifest = copy.deepcopy(template.manifest)
    manifest["metadata"]["name"] = name
    manifest["metadata"].setdefault("labels", {})[STAGE_LABEL] = stage.value
    manifest["spec"]["entrypoint"] = f"{manifest['spec']['entrypoint']} {shlex.join(args)}"
    return manifest


def train_as_rayjob(
    template: RayJobTemplate,
    cfg: TrainConfig,
    *,
    data: str,
    out: str | Path,
    init: str | None = None,
    max_steps: int | None = None,
    parent_run_id: str | None = None,
    settings: Settings | None = None,
    api_client: kubernetes.client.ApiClient | None = None,
    on_line: Callable[[str], None] | None = None,
) -> RayStageRun:
    """Train ``cfg`` on ``data`` (the step's local data artifact) as a RayJob, initialised from
    ``init``; the final checkpoint is pulled into the local folder ``out``. Raises
    :class:`~worldloop.k8s.rayjob.RayJobFailed` with the job's message when it fails."""
    settings = settings or get_settings()
    sources = [
        DataSource(uri=remote_uri(s.uri), weight=s.weight) for s in resolve_sources(data, settings=settings)
    ]
    init_uri = remote_uri(init) if init else None
    identity = {
        "config": cfg.model_dump(mode="json"),
        "data": [s.model_dump() for s in sources],
        "init": init_uri,
        "max_steps": max_steps,
        "parent_run_id": parent_run_id,
        "manifest": template.manifest,
    }
    name = job_name(cfg.stage, identity)
    folder = storage.join(template.output_root, name)
    config_uri, checkpoints = storage.join(folder, "config.yaml"), storage.join(folder, "checkpoints")
    result_uri = storage.join(folder, "result.json")
    storage.write_bytes(config_uri, dump_yaml(cfg).encode(), settings=settings)
    args = ["--stage", COMMAND_STAGES[cfg.stage], "--config", config_uri, "--out", checkpoints]
    for source in sources:
        args += ["--data", f"{source.uri}={source.weight!r}"]
    args += ["--init", init_uri] if init_uri else []
    args += ["--steps", str(max_steps)] if max_steps else []
    args += ["--parent-run-id", parent_run_id] if parent_run_id else []
    args += ["--result", result_uri]
    manifest = job_manifest(template, name=name, stage=cfg.stage, args=args)
    namespace = manifest["metadata"]["namespace"]
    log.info("stage %s as RayJob %s/%s into %s", cfg.stage.value, namespace, name, folder)
    run_rayjob(
        manifest,
        api_client=api_client,
        kubeconfig=None if settings.kubeconfig is None else str(settings.kubeconfig),
        on_line=on_line or (lambda line: log.info("[%s] %s", name, line)),
        poll_s=template.poll_s,
    )
    summary = RayStageRun.model_validate_json(storage.read_bytes(result_uri, settings=settings))
    CheckpointMirror(checkpoints, settings=settings).pull(Path(out))
    log.info(
        "RayJob %s: step %d on %d ranks; checkpoint pulled into %s",
        name,
        summary.steps,
        summary.world_size,
        out,
    )
    return summary
