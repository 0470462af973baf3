"""The audit trail: one JSON tag ``audit.NNNN`` per decision, on the version it concerns (DESIGN.md §8)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from worldloop.components.registry.gate import GateResult
from worldloop.components.registry.tags import AUDIT

if TYPE_CHECKING:
    from mlflow import MlflowClient


class AuditRecord(BaseModel):
    """Who did what, when, with which result, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["approve", "promote", "rollback"]
    version: int | None = Field(description="The version the decision was about (None: no champion).")
    identity: str
    time: str = Field(description="UTC, ISO 8601.")
    result: Literal["allowed", "refused"]
    reasons: list[str] = Field(description="Refused: every reason. Allowed: what was checked.")
    champion_before: int | None = None
    champion_after: int | None = None
    gate: GateResult | None = None


def read_audit(tags: Mapping[str, str]) -> tuple[AuditRecord, ...]:
    keys = sorted(k for k in tags if k.startswith(AUDIT))
    return tuple(AuditRecord.model_validate_json(tags[k]) for k in keys)


def write_audit(mlflow: MlflowClient, name: str, versions: list[int], record: AuditRecord) -> None:
    """Append ``record`` to the trail of each of ``versions`` (of the registered model when empty)."""
    value = record.model_dump_json()
    if not versions:
        tags = mlflow.get_registered_model(name).tags
        key = f"{AUDIT}{1 + sum(k.startswith(AUDIT) for k in tags):04d}"
        mlflow.set_registered_model_tag(name, key, value)
    for version in versions:
        tags = mlflow.get_model_version(name, str(version)).tags
        key = f"{AUDIT}{1 + sum(k.startswith(AUDIT) for k in tags):04d}"
        mlflow.set_model_version_tag(name, str(version), key, value)
