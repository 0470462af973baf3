"""Approval-gated promotion of a version to ``champion``, and rollback (DESIGN.md §8).

The rules:

* **approve** — only an identity in ``settings.approvers`` may approve, with a reason; the approval is
  recorded as ``approval.identity`` / ``approval.reason`` / ``approval.time`` tags on the version.
* **promote** — moves ``champion`` to the version only if the one promoting is an approver, the
  version carries an approval by an identity that is still an approver, and it passes the InterBench
  gate against the current champion (:mod:`worldloop.components.registry.gate`). A refusal names every
  reason at once.
* **rollback** — an approver moves ``champion`` back to the champion before it (``champion.history``
  on the registered model is a stack: repeated rollbacks walk back through earlier champions).

Every decision, allowed or refused, is appended to the audit trail (``audit.NNNN``) of the versions it
concerns. Identities are asserted (``--as`` / ``WORLDLOOP_IDENTITY``), not authenticated: the audit
trail records who claimed to act; authentication belongs to whatever fronts the MLflow server.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from worldloop.components.registry.audit import AuditRecord, write_audit
from worldloop.components.registry.gate import GatePolicy, GateResult, gate
from worldloop.components.registry.tags import (
    APPROVAL_IDENTITY,
    APPROVAL_REASON,
    APPROVAL_TIME,
    CHAMPION_HISTORY,
    PREVIOUS_CHAMPION,
    PROMOTED_AT,
    PROMOTED_BY,
)
from worldloop.components.registry.versions import (
    CHAMPION,
    ModelVersionInfo,
    alias_version,
    get_version,
    now_iso,
)
from worldloop.platform.registry import model_exists, registry_client
from worldloop.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

MAX_HISTORY = 100  # champions remembered for rollback (keeps the tag small)


class Refused(RuntimeError):
    """A decision the rules refuse; ``reasons`` lists every reason (the CLI exits 1 on it)."""

    def __init__(self, what: str, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(f"{what} refused: " + "; ".join(self.reasons))


@dataclass(frozen=True)
class Decision:
    """An allowed promotion or rollback: the champion before and after, and what was recorded."""

    version: ModelVersionInfo  # the new champion, as it is now
    champion_before: int | None
    champion_after: int
    gate: GateResult | None  # None for a rollback
    record: AuditRecord


def _unauthorised(identity: str, settings: Settings) -> str | None:
    """None when ``identity`` is an approver, else why not."""
    approvers = settings.resolved_approvers
    if identity in approvers:
        return None
    listed = ", ".join(approvers) if approvers else "none configured: set WORLDLOOP_APPROVERS"
    return f"{identity} is not an authorised approver (approvers: {listed})"


def _record(
    action: Literal["approve", "promote", "rollback"],
    version: int | None,
    identity: str,
    reasons: list[str],
    *,
    allowed: bool,
    before: int | None = None,
    after: int | None = None,
    gate_result: GateResult | None = None,
) -> AuditRecord:
    return AuditRecord(
        action=action,
        version=version,
        identity=identity,
        time=now_iso(),
        result="allowed" if allowed else "refused",
        reasons=reasons,
        champion_before=before,
        champion_after=after,
        gate=gate_result,
    )


def approve(
    version: int | str, *, reason: str, identity: str | None = None, settings: Settings | None = None
) -> ModelVersionInfo:
    """Record an approval of ``version`` (a number or an alias) by ``identity`` (default: settings')."""
    settings = settings or get_settings()
    identity = identity or settings.resolved_identity
    if not reason.strip():
        raise ValueError("an approval needs a reason (--reason '...')")
    mlflow, name = registry_client(settings), settings.registered_model
    info = get_version(mlflow, name, version, settings)
    refusal = _unauthorised(identity, settings)
    if refusal is not None:
        write_audit(
            mlflow, name, [info.version], _record("approve", info.version, identity, [refusal], allowed=False)
        )
        raise Refused(f"approval of {name} v{info.version}", [refusal])
    record = _record("approve", info.version, identity, [f"approved: {reason.strip()}"], allowed=True)
    for key, value in (
        (APPROVAL_IDENTITY, identity),
        (APPROVAL_REASON, reason.strip()),
        (APPROVAL_TIME, record.time),
    ):
        mlflow.set_model_version_tag(name, str(info.version), key, value)
    write_audit(mlflow, name, [info.version], record)
    log.info("%s approved %s v%d: %s", identity, name, info.version, reason.strip())
    return get_version(mlflow, name, info.version, settings)


def gate_policy(settings: Settings) -> GatePolicy:
    """The gate's rules from the settings (``WORLDLOOP_GATE_*``)."""
    return GatePolicy(
        tolerance=settings.gate_tolerance,
        floors=dict(settings.gate_floors),
        baseline_metrics=tuple(settings.gate_baseline_metrics),
    )


def check_gate(info: ModelVersionInfo, *, settings: Settings | None = None) -> GateResult:
    """The promotion gate of ``info`` against the current champion under the settings' policy."""
    settings = settings or get_settings()
    mlflow = registry_client(settings)
    champion = alias_version(mlflow, info.name, CHAMPION)
    champion_evidence = (
        None if champion is None else get_version(mlflow, info.name, champion, settings).evidence
    )
    return gate(info.evidence, champion=champion_evidence, policy=gate_policy(settings))


def _history(mlflow: MlflowClient, name: str) -> list[int]:
    raw = mlflow.get_registered_model(name).tags.get(CHAMPION_HISTORY)
    return [int(v) for v in json.loads(raw)] if raw else []


def _promotion_refusals(
    info: ModelVersionInfo, identity: str, before: int | None, result: GateResult, settings: Settings
) -> list[str]:
    reasons = []
    if before == info.version:
        reasons.append(f"v{info.version} is already the champion")
    if (who := _unauthorised(identity, settings)) is not None:
        reasons.append(f"may not promote: {who}")
    if info.approval is None:
        reasons.append(
            f"v{info.version} is not approved (worldloop models approve {info.version} --reason ...)"
        )
    elif (who := _unauthorised(info.approval.identity, settings)) is not None:
        reasons.append(f"approval does not count: {who}")
    if not result.passed:
        reasons += [f"InterBench gate failed: {why}" for why in result.reasons]
    return reasons


def promote(version: int | str, *, identity: str | None = None, settings: Settings | None = None) -> Decision:
    """Move ``champion`` to ``version`` (a number or an alias), or raise :class:`Refused` naming every
    reason."""
    settings = settings or get_settings()
    identity = identity or settings.resolved_identity
    mlflow, name = registry_client(settings), settings.registered_model
    info = get_version(mlflow, name, version, settings)
    before = alias_version(mlflow, name, CHAMPION)
    result = check_gate(info, settings=settings)
    reasons = _promotion_refusals(info, identity, before, result, settings)
    if reasons:
        record = _record(
            "promote",
            info.version,
            identity,
            reasons,
            allowed=False,
            before=before,
            after=before,
            gate_result=result,
        )
        write_audit(mlflow, name, [info.version], record)
        raise Refused(f"promotion of {name} v{info.version}", reasons)

    assert info.approval is not None  # checked by _promotion_refusals
    history = _history(mlflow, name)
    if before is not None and (not history or history[-1] != before):
        history.append(before)  # champion set outside worldloop: still restorable
    history = [*history, info.version][-MAX_HISTORY:]
    mlflow.set_registered_model_alias(name, CHAMPION, str(info.version))
    mlflow.set_registered_model_tag(name, CHAMPION_HISTORY, json.dumps(history))
    why = [
        f"approved by {info.approval.identity} at {info.approval.time}: {info.approval.reason}",
        *result.reasons,
    ]
    record = _record(
        "promote",
        info.version,
        identity,
        why,
        allowed=True,
        before=before,
        after=info.version,
        gate_result=result,
    )
    tags = {
        PROMOTED_BY: identity,
        PROMOTED_AT: record.time,
        PREVIOUS_CHAMPION: "none" if before is None else str(before),
    }
    for key, value in tags.items():
        mlflow.set_model_version_tag(name, str(info.version), key, value)
    write_audit(mlflow, name, [info.version] + ([before] if before is not None else []), record)
    log.info("%s promoted %s v%d to %s (was %s)", identity, name, info.version, CHAMPION, before)
    return Decision(get_version(mlflow, name, info.version, settings), before, info.version, result, record)


def rollback(*, identity: str | None = None, settings: Settings | None = None) -> Decision:
    """Move ``champion`` back to the champion before the current one, or raise :class:`Refused`."""
    settings = settings or get_settings()
    identity = identity or settings.resolved_identity
    mlflow, name = registry_client(settings), settings.registered_model
    if not model_exists(mlflow, name):
        raise ValueError(
            f"no registered model {name!r} in {settings.resolved_mlflow_uri}: nothing to roll back"
        )
    current = alias_version(mlflow, name, CHAMPION)
    history = _history(mlflow, name)
    earlier = history[:-1] if history and history[-1] == current else history
    target = earlier[-1] if earlier else None
    reasons = [] if (who := _unauthorised(identity, settings)) is None else [f"may not roll back: {who}"]
    if current is None:
        reasons.append(f"{name} has no champion to roll back")
    elif target is None:
        reasons.append(f"champion v{current} has no previous champion to restore")
    else:
        try:
            get_version(mlflow, name, target, settings)
        except ValueError:
            reasons.append(f"the previous champion v{target} no longer exists")
    if reasons:
        record = _record("rollback", current, identity, reasons, allowed=False, before=current, after=current)
        write_audit(mlflow, name, [] if current is None else [current], record)
        raise Refused(f"rollback of {name} {CHAMPION}", reasons)

    assert current is not None and target is not None
    mlflow.set_registered_model_alias(name, CHAMPION, str(target))
    mlflow.set_registered_model_tag(name, CHAMPION_HISTORY, json.dumps(earlier))
    why = [f"restored the previous champion v{target} in place of v{current}"]
    record = _record("rollback", target, identity, why, allowed=True, before=current, after=target)
    write_audit(mlflow, name, [current, target], record)
    log.info("%s rolled %s %s back from v%d to v%d", identity, name, CHAMPION, current, target)
    return Decision(get_version(mlflow, name, target, settings), current, target, None, record)
