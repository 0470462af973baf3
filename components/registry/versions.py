"""Reading the registry for the CLI and the promotion rules: what a version holds — scores, approval,
lineage, audit (DESIGN.md §8). The MLflow client, version lookup and a version's checkpoint files are
the platform's (:mod:`worldloop.platform.registry`), which loaders use without this step library.

A version is named by its number (``3``) or an alias (``candidate``, ``champion``). Everything worldloop
knows about a version lives in its MLflow tags (see :mod:`worldloop.components.registry.tags`), so the
MLflow UI shows the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from worldloop.components.registry.audit import AuditRecord, read_audit
from worldloop.components.registry.evidence import evidence
from worldloop.components.registry.gate import Evidence
from worldloop.components.registry.tags import (
    APPROVAL_IDENTITY,
    APPROVAL_REASON,
    APPROVAL_TIME,
    LINEAGE,
    SCORES,
)
from worldloop.platform.registry import CHAMPION as CHAMPION  # the platform's: serving verifies it
from worldloop.platform.registry import lookup_version, model_exists, registry_client
from worldloop.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CANDIDATE = "candidate"


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
    evidence: Evidence  # what the gate sees: scores with their suite/judge/cases, the quality ladder
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
        evidence=evidence(int(mv.version), tags),
        approval=approval,
        lineage={k.removeprefix(LINEAGE): v for k, v in sorted(tags.items()) if k.startswith(LINEAGE)},
        audit=read_audit(tags),
    )


def get_version(mlflow: MlflowClient, name: str, ref: int | str, settings: Settings) -> ModelVersionInfo:
    """Version ``ref`` (a number, or an alias such as ``champion``) of registered model ``name``."""
    mv = lookup_version(mlflow, name, ref, settings)
    return version_info(mv, _aliases_by_version(mlflow, name).get(int(mv.version), ()))


def alias_version(mlflow: MlflowClient, name: str, alias: str) -> int | None:
    """The version ``alias`` points to, or None."""
    version = mlflow.get_registered_model(name).aliases.get(alias)
    return None if version is None else int(version)


def list_versions(*, settings: Settings | None = None) -> list[ModelVersionInfo]:
    """Every version of the settings' registered model, newest first ([] when nothing is registered)."""
    settings = settings or get_settings()
    mlflow, name = registry_client(settings), settings.registered_model
    if not model_exists(mlflow, name):
        return []
    aliases = _aliases_by_version(mlflow, name)
    found = mlflow.search_model_versions(f"name = '{name}'")
    infos = [version_info(mv, aliases.get(int(mv.version), ())) for mv in found]
    return sorted(infos, key=lambda info: info.version, reverse=True)


def show(version: int | str, *, settings: Settings | None = None) -> ModelVersionInfo:
    """One version of the settings' registered model (a number or an alias)."""
    settings = settings or get_settings()
    return get_version(registry_client(settings), settings.registered_model, version, settings)
