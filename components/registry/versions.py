"""Reading the registry: the MLflow client of the settings, version references, what a version holds,
and its checkpoint files on local disk (DESIGN.md §8).

A version is named by its number (``3``) or an alias (``candidate``, ``champion``); a model URI by
``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``. Everything worldloop knows about a version lives in
its MLflow tags (see :mod:`worldloop.components.registry.tags`), so the MLflow UI shows the same.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from worldloop.components.registry.audit import AuditRecord, read_audit
from worldloop.components.registry.tags import (
    APPROVAL_IDENTITY,
    APPROVAL_REASON,
    APPROVAL_TIME,
    LINEAGE,
    SCORES,
)

from worldloop.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CANDIDATE, CHAMPION = "candidate", "champion"
CHECKPOINT_ARTIFACTS = "checkpoint"  # the run's artifact folder holding the weights
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "state.json")  # what loading needs


def client(settings: Settings) -> MlflowClient:
    """An MLflow client on the settings' tracking store, which also holds the registry."""
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass(frozen=True)
class Approval:
    identity: str
    reason: str
    time: str  # UTC, ISO 8601


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version as the CLI and the promotion rules see it."""

    name: str
    version: int
    aliases: tuple[str, ...]
    created: str  # UTC, ISO 8601
    run_id: str | None  # the registration run (its artifacts hold the checkpoint and the report)
    source: str
    scores: dict[str, float | None] | None  # the six InterBench dimensions; None when not evaluated
    approval: Approval | None
    lineage: dict[str, str]  # lineage.* tags without the prefix
    audit: tuple[AuditRecord, ...]  # every decision about this version, oldest first

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _aliases_by_version(mlflow: MlflowClient, name: str) -> dict[int, tuple[str, ...]]:
    found: dict[int, list[str]] = {}
    for alias, version in mlflow.get_registered_model(name).aliases.items():
        found.setdefault(int(version), []).append(alias)
    return {v: tuple(sorted(a)) for v, a in found.items()}


def version_info(mv: ModelVersion, aliases: tuple[str, ...]) -> ModelVersionInfo:
    tags: dict[str, str] = dict(mv.tags)
    scores = json.loads(tags[SCORES]) if SCORES in tags else None
    approval = None
    if APPROVAL_IDENTITY in tags:
        approval = Approval(
            tags[APPROVAL_IDENTITY], tags.get(APPROVAL_REASON, ""), tags.get(APPROVAL_TIME, "")
        )
    created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds")
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        aliases=aliases,
        created=created,
        run_id=mv.run_id or None,
        source=mv.source or "",
        scores=scores,
        approval=approval,
        lineage={k.removeprefix(LINEAGE): v for k, v in sorted(tags.items()) if k.startswith(LINEAGE)},
        audit=read_audit(tags),
    )


def model_exists(mlflow: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _missing_model(name: str, settings: Settings) -> ValueError:
    return ValueError(
        f"no registered model {name!r} in {settings.resolved_mlflow_uri}: register a version first "
        "(a pipeline run does; or worldloop.components.registry.register_version)"
    )


def get_version(mlflow: MlflowClient, name: str, ref: int | str, settings: Settings) -> ModelVersionInfo:
    """Version ``ref`` (a number, or an alias such as ``champion``) of registered model ``name``."""
    from mlflow.exceptions import MlflowException

    if not model_exists(mlflow, name):
        raise _missing_model(name, settings)
    text = str(ref).strip()
    try:
        mv = (
            mlflow.get_model_version(name, text)
            if text.isdigit()
            else mlflow.get_model_version_by_alias(name, text)
        )
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        what = f"version {text}" if text.isdigit() else f"alias {text!r}"
        raise ValueError(f"{name}: no {what} (see 'worldloop models list')") from err
    return version_info(mv, _aliases_by_version(mlflow, name).get(int(mv.version), ()))


def alias_version(mlflow: MlflowClient, name: str, alias: str) -> int | None:
    """The version ``alias`` points to, or None."""
    version = mlflow.get_registered_model(name).aliases.get(alias)
    return None if version is None else int(version)


def list_versions(*, settings: Settings | None = None) -> list[ModelVersionInfo]:
    """Every version of the settings' registered model, newest first ([] when nothing is registered)."""
    settings = settings or get_settings()
    mlflow, name = client(settings), settings.registered_model
    if not model_exists(mlflow, name):
        return []
    aliases = _aliases_by_version(mlflow, name)
    found = mlflow.search_model_versions(f"name = '{name}'")
    infos = [version_info(mv, aliases.get(int(mv.version), ())) for mv in found]
    return sorted(infos, key=lambda info: info.version, reverse=True)


def show(version: int | str, *, settings: Settings | None = None) -> ModelVersionInfo:
    """One version of the settings' registered model (a number or an alias)."""
    settings = settings or get_settings()
    return get_version(client(settings), settings.registered_model, version, settings)


def parse_model_uri(uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → (NAME, ALIAS or VERSION)."""
    rest = uri.removeprefix("models:/")
    name, sep, ref = rest.partition("@")
    if not sep:
        name, sep, ref = rest.partition("/")
        if sep and not ref.isdigit():
            sep = ""
    if not (sep and name and ref) or "/" in name:
        raise ValueError(
            f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION (e.g. models:/worldloop@champion)"
        )
    return name, ref


def resolve(uri: str, *, settings: Settings | None = None) -> ModelVersionInfo:
    """The version a ``models:/`` URI names now (serving polls this to follow ``champion``)."""
    settings = settings or get_settings()
    name, ref = parse_model_uri(uri)
    return get_version(client(settings), name, ref, settings)


def download_checkpoint(uri: str, *, settings: Settings | None = None) -> Path:
    """The checkpoint of the version ``uri`` names, as a local folder (cached under ``home`` per
    registration run: a version's files never change)."""
    settings = settings or get_settings()
    info = resolve(uri, settings=settings)
    if info.run_id is None:
        raise ValueError(
            f"{uri} (version {info.version}) has no registration run: not registered by worldloop"
        )
    root = (settings.home / "registry-cache").resolve()
    final = root / info.run_id
    if all((final / f).is_file() for f in ("model.safetensors", "state.json")):
        return final
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{info.run_id}.partial-{uuid.uuid4().hex[:8]}"
    try:
        downloaded = client(settings).download_artifacts(info.run_id, CHECKPOINT_ARTIFACTS, str(partial))
        shutil.rmtree(final, ignore_errors=True)
        Path(downloaded).rename(final)  # whole, or not at all
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final
