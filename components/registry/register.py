"""Register a trained checkpoint as a version of the registered model, with its lineage and InterBench
scores, and point the ``candidate`` alias at it (DESIGN.md §8).

One MLflow run per registration (a child of the pipeline run when given, else in the
``worldloop-registry`` experiment) holds the files serving loads — ``checkpoint/`` with
``model.safetensors``, ``ema.safetensors``, ``vae.safetensors``, ``spec.json``, ``state.json`` and
``lineage.json``, never the optimizer state — the training
config, and the InterBench report; the version points at that run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worldloop import storage
from worldloop.components.registry.evidence import interbench_tags, quality_tags, read_payload, read_quality
from worldloop.components.registry.gate import DIMENSIONS
from worldloop.components.registry.tags import (
    CHECKPOINT,
    CHECKPOINT_STEP,
    CONFIG,
    CONFIG_SHA256,
    DATA,
    DATA_SHA256,
    MAX_TAG_CHARS,
    MODEL_PRESET,
    PIPELINE_RUN,
    TEACHER_SHA256,
)
from worldloop.components.registry.versions import CANDIDATE, ModelVersionInfo, get_version
from worldloop.data import LINEAGE_FILE, Lineage
from worldloop.platform.checkpoints import CHECKPOINT_FILES, local_checkpoint
from worldloop.platform.registry import CHECKPOINT_ARTIFACTS, model_exists, registry_client
from worldloop.platform.tracking import REGISTRY, experiment_id, parent_tags
from worldloop.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def _interbench(scores: Mapping[str, Any] | Path | None, report_dir: Path | None) -> dict[str, Any] | None:
    """The InterBench scores.json payload: given, read from a path, or from the report folder; checked."""
    payload = read_payload(scores, report_dir, "scores.json", required=False)
    if payload is None:
        return None
    dims = payload.get("interbench")
    if not isinstance(dims, Mapping) or set(dims) != set(DIMENSIONS):
        raise ValueError(
            f"not an InterBench scores.json: 'interbench' must hold exactly {', '.join(DIMENSIONS)}"
        )
    for dim, value in dims.items():
        if value is not None and not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            raise ValueError(f"InterBench score {dim}={value!r} is not a number in [0, 1] (or null)")
    return payload


def _version_tags(
    uri: str,
    folder: Path,
    config: Mapping[str, Any],
    payload: Mapping[str, Any] | None,
    quality: Mapping[str, Any] | None,
    pipeline_run_id: str | None,
) -> dict[str, str]:
    config_json = json.dumps(config, sort_keys=True, default=str)
    tags = {
        CHECKPOINT: uri,
        CHECKPOINT_STEP: folder.name,
        CONFIG_SHA256: hashlib.sha256(config_json.encode()).hexdigest(),
        MODEL_PRESET: str(config.get("model_preset", "")),
    }
    if len(config_json) <= MAX_TAG_CHARS:  # always whole in the run's config.json
        tags[CONFIG] = config_json
    tags |= _data_tags(folder)
    if pipeline_run_id is not None:
        tags[PIPELINE_RUN] = pipeline_run_id
    if payload is not None:
        tags |= interbench_tags(payload)
    if quality is not None:
        tags |= quality_tags(quality)
    return tags


def _data_tags(folder: Path) -> dict[str, str]:
    """The data lineage of the checkpoint (``lineage.json``, written by the training loop from what its
    data loader read): its digest, and per stage the datasets with their weights and shards read."""
    path = folder / LINEAGE_FILE
    if not path.is_file():
        log.warning("%s has no %s: the version records no data lineage", folder, LINEAGE_FILE)
        return {}
    data = path.read_bytes()
    lineage = Lineage.model_validate_json(data)
    summary = [  # in training order
        {
            "stage": stage.stage,
            "sources": [
                {"uri": s.uri, "weight": s.weight, "kind": s.kind, "shards_read": len(s.shards_read)}
                for s in stage.sources
            ],
        }
        for stage in lineage.stages
    ]
    tags = {DATA_SHA256: hashlib.sha256(data).hexdigest()}
    if lineage.teacher is not None:  # the real score stages 3-4 distilled against
        tags[TEACHER_SHA256] = lineage.teacher.weights_sha256
    text = json.dumps(summary)
    if len(text) <= MAX_TAG_CHARS:  # always whole in the version's checkpoint/lineage.json
        tags[DATA] = text
    return tags


def _log_run(
    mlflow: MlflowClient,
    run_id: str,
    folder: Path,
    config: Mapping[str, Any],
    payload: Mapping[str, Any] | None,
    report_dir: Path | None,
    quality_dir: Path | None,
) -> None:
    from mlflow.entities import Metric

    for name in CHECKPOINT_FILES:
        if (folder / name).is_file():
            mlflow.log_artifact(run_id, str(folder / name), CHECKPOINT_ARTIFACTS)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config, indent=1, sort_keys=True, default=str), encoding="utf-8")
        mlflow.log_artifact(run_id, str(path))
    if payload is not None:
        values = {f"interbench.{k}": v for k, v in payload["interbench"].items() if v is not None}
        values |= {f"general.{k}": v for k, v in payload.get("general", {}).items() if isinstance(v, float)}
        now = int(time.time() * 1000)
        mlflow.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    if report_dir is not None:
        if not report_dir.is_dir():
            raise FileNotFoundError(f"{report_dir}: no such InterBench report folder")
        mlflow.log_artifacts(run_id, str(report_dir), "interbench")
    if quality_dir is not None:
        mlflow.log_artifacts(run_id, str(quality_dir), "quality")


def register_version(
    checkpoint: str | Path,
    *,
    scores: Mapping[str, Any] | Path | None = None,
    report_dir: Path | None = None,
    quality: Mapping[str, Any] | Path | None = None,
    quality_dir: Path | None = None,
    config: Mapping[str, Any] | None = None,
    pipeline_run_id: str | None = None,
    settings: Settings | None = None,
) -> ModelVersionInfo:
    """Register ``checkpoint`` (a checkpoint folder, or a stage output whose latest checkpoint is meant;
    local or ``s3://``) as a new version with alias ``candidate``.

    ``scores``: the InterBench ``scores.json`` payload or its path (default: ``report_dir/scores.json``
    when there is one); a version without scores never passes the promotion gate. ``quality``: the
    quality ladder's ``quality.json`` payload or its path (default: ``quality_dir/quality.json``); the
    gate asks for it unless no baseline metric is configured. ``config``: the training config (default:
    the checkpoint's ``state.json`` config). The data lineage is the checkpoint's own ``lineage.json``:
    what its training stages read.
    """
    settings = settings or get_settings()
    folder = local_checkpoint(checkpoint, settings=settings)
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    config = dict(config if config is not None else state.get("config") or {})
    payload = _interbench(scores, report_dir)
    ladder = read_quality(quality, quality_dir)
    mlflow, name = registry_client(settings), settings.registered_model

    experiment = experiment_id(mlflow, REGISTRY, settings=settings, parent_run_id=pipeline_run_id)
    run = mlflow.create_run(experiment, run_name="register", tags=parent_tags(pipeline_run_id))
    run_id = run.info.run_id
    try:
        _log_run(mlflow, run_id, folder, config, payload, report_dir, quality_dir)
    except BaseException:
        mlflow.set_terminated(run_id, status="FAILED")
        raise
    mlflow.set_terminated(run_id)

    if not model_exists(mlflow, name):
        mlflow.create_registered_model(name, description="worldloop world model (DESIGN.md §8)")
    source = str(checkpoint)
    if not source.rstrip("/").endswith(folder.name):  # a stage output: name the checkpoint taken from it
        source = storage.join(source, folder.name)
    version_tags = _version_tags(source, folder, config, payload, ladder, pipeline_run_id)
    mv = mlflow.create_model_version(
        name, f"{run.info.artifact_uri}/{CHECKPOINT_ARTIFACTS}", run_id=run_id, tags=version_tags
    )
    mlflow.set_registered_model_alias(name, CANDIDATE, str(mv.version))
    log.info("registered %s version %s (%s) as %s", name, mv.version, folder, CANDIDATE)
    return get_version(mlflow, name, int(mv.version), settings)
