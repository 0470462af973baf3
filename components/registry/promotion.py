"""Approval-gated promotion of a version to ``champion``, and rollback (DESIGN.md §8).

The rules:

* **approve** — only an approver may approve, with a reason; the approval is recorded as
  ``approval.identity`` / ``approval.reason`` / ``approval.time`` tags on the version and, signed, as
  ``approval.record``.
* **promote** — moves ``champion`` to the version only if the one promoting is an approver, the
  version carries a signed approval of the version as it is now, by an approver, and it passes the
  InterBench gate against the current champion (:mod:`worldloop.components.registry.gate`). A refusal
  names every reason at once.
* **rollback** — an approver moves ``champion`` back to the champion before it (``champion.history``
  on the registered model is a stack: repeated rollbacks walk back through earlier champions).

Who acts (:mod:`worldloop.components.registry.identity`): on the cluster profile the caller's
Kubernetes user, authenticated by the API server, and approvers are the group ``worldloop-approvers``
(``--as`` is refused); locally a name asserted with ``--as`` / ``WORLDLOOP_IDENTITY``, checked against
``WORLDLOOP_APPROVERS``. Every allowed approval and promotion, and each move of ``champion``, is signed
with HMAC-SHA256 under the key of a Kubernetes Secret (locally a key under ``HOME``;
:mod:`worldloop.platform.signing`), and serving follows ``champion`` only along a chain that verifies —
moving the alias with plain MLflow write access does not get a version served.

Every decision, allowed or refused, is appended to the audit trail (``audit.NNNN``) of the versions it
concerns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from worldloop.components.registry.audit import AuditRecord, write_audit
from worldloop.components.registry.gate import GatePolicy, GateResult, gate
from worldloop.components.registry.identity import Caller, resolve_caller, signing_key, unauthorised
from worldloop.components.registry.tags import (
    APPROVAL_IDENTITY,
    APPROVAL_REASON,
    APPROVAL_RECORD,
    APPROVAL_TIME,
    CHAMPION_HISTORY,
    CHAMPION_RECORD,
    PREVIOUS_CHAMPION,
    PROMOTED_AT,
    PROMOTED_BY,
    PROMOTION_RECORD,
)
from worldloop.components.registry.versions import (
    CHAMPION,
    ModelVersionInfo,
    alias_version,
    get_version,
    now_iso,
)
from worldloop.platform.registry import lookup_version, model_exists, registry_client
from worldloop.platform.signing import (
    ApprovalRecord,
    ChampionRecord,
    PromotionRecord,
    UnverifiedChampion,
    read_record,
    subject_of,
    verified_promotion,
)
from worldloop.settings import Profile, Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

MAX_HISTORY = 100  # champions remembered for rollback (keeps the tag small)
MAX_REASON_CHARS = 1000  # the signed promotion carries its approval whole, in one tag of at most 5000


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
    """Record an approval of ``version`` (a number or an alias) by the caller: ``identity`` (``--as``;
    default: the settings') locally, the authenticated Kubernetes user on a cluster."""
    settings = settings or get_settings()
    reason = reason.strip()
    if not reason:
        raise ValueError("an approval needs a reason (--reason '...')")
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"the reason is {len(reason)} characters; keep it to {MAX_REASON_CHARS}")
    caller = resolve_caller(identity, settings)
    mlflow, name = registry_client(settings), settings.registered_model
    info = get_version(mlflow, name, version, settings)
    refusal = unauthorised(caller, settings)
    if refusal is not None:
        record = _record("approve", info.version, caller.identity, [refusal], allowed=False)
        write_audit(mlflow, name, [info.version], record)
        raise Refused(f"approval of {name} v{info.version}", [refusal])
    record = _record("approve", info.version, caller.identity, [f"approved: {reason}"], allowed=True)
    signed = ApprovalRecord(
        subject=subject_of(lookup_version(mlflow, name, info.version, settings)),
        identity=caller.identity,
        authenticated=caller.authenticated,
        reason=reason,
        time=record.time,
    ).signed(signing_key(settings))
    for key, value in (
        (APPROVAL_IDENTITY, caller.identity),
        (APPROVAL_REASON, reason),
        (APPROVAL_TIME, record.time),
        (APPROVAL_RECORD, signed.model_dump_json()),
    ):
        mlflow.set_model_version_tag(name, str(info.version), key, value)
    write_audit(mlflow, name, [info.version], record)
    log.info("%s approved %s v%d: %s", caller.identity, name, info.version, reason)
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


def _approval_refusals(
    mv: ModelVersion, approval: ApprovalRecord | None, key: bytes | None, settings: Settings
) -> list[str]:
    """Why the approval on ``mv`` does not count; its signature is checked when ``key`` is given (only
    for a caller allowed to promote, who may read the key)."""
    version = int(mv.version)
    again = f"(worldloop models approve {version} --reason ...)"
    if approval is None and APPROVAL_IDENTITY in mv.tags:
        return [f"v{version}'s approval is not signed: approve it again {again}"]
    if approval is None:
        return [f"v{version} is not approved {again}"]
    if key is not None and not approval.verifies(key):
        return ["approval does not count: its signature does not verify under the signing key"]
    if key is not None and approval.subject != subject_of(mv):
        return [f"approval does not count: v{version} changed since it was approved (approve it again)"]
    if settings.profile is Profile.cluster and not approval.authenticated:
        return [f"approval does not count: {approval.identity} was not authenticated by Kubernetes"]
    if settings.profile is Profile.local and (who := unauthorised(Caller(approval.identity), settings)):
        return [f"approval does not count: {who}"]
    return []


def _promotion_refusals(
    info: ModelVersionInfo, caller: Caller, before: int | None, settings: Settings
) -> list[str]:
    reasons = []
    if before == info.version:
        reasons.append(f"v{info.version} is already the champion")
    if (who := unauthorised(caller, settings)) is not None:
        reasons.append(f"may not promote: {who}")
    return reasons


def promote(version: int | str, *, identity: str | None = None, settings: Settings | None = None) -> Decision:
    """Move ``champion`` to ``version`` (a number or an alias), or raise :class:`Refused` naming every
    reason. The caller is resolved as for :func:`approve`."""
    settings = settings or get_settings()
    caller = resolve_caller(identity, settings)
    mlflow, name = registry_client(settings), settings.registered_model
    info = get_version(mlflow, name, version, settings)
    mv = lookup_version(mlflow, name, info.version, settings)
    before = alias_version(mlflow, name, CHAMPION)
    result = check_gate(info, settings=settings)
    reasons = _promotion_refusals(info, caller, before, settings)
    key = signing_key(settings) if unauthorised(caller, settings) is None else None
    approval = read_record(ApprovalRecord, mv.tags.get(APPROVAL_RECORD))
    reasons += _approval_refusals(mv, approval, key, settings)
    reasons += [f"InterBench gate failed: {why}" for why in result.reasons if not result.passed]
    if reasons:
        record = _record(
            "promote",
            info.version,
            caller.identity,
            reasons,
            allowed=False,
            before=before,
            after=before,
            gate_result=result,
        )
        write_audit(mlflow, name, [info.version], record)
        raise Refused(f"promotion of {name} v{info.version}", reasons)

    assert approval is not None and key is not None  # checked above
    history = _history(mlflow, name)
    if before is not None and (not history or history[-1] != before):
        history.append(before)  # champion set outside worldloop: still restorable
    history = [*history, info.version][-MAX_HISTORY:]
    why = [f"approved by {approval.identity} at {approval.time}: {approval.reason}", *result.reasons]
    record = _record(
        "promote",
        info.version,
        caller.identity,
        why,
        allowed=True,
        before=before,
        after=info.version,
        gate_result=result,
    )
    promotion = PromotionRecord(
        subject=subject_of(mv),
        identity=caller.identity,
        authenticated=caller.authenticated,
        time=record.time,
        previous_champion=before,
        approval=approval,
    ).signed(key)
    tags = {
        PROMOTED_BY: caller.identity,
        PROMOTED_AT: record.time,
        PREVIOUS_CHAMPION: "none" if before is None else str(before),
        PROMOTION_RECORD: promotion.model_dump_json(),
    }
    for tag, value in tags.items():
        mlflow.set_model_version_tag(name, str(info.version), tag, value)
    _move_champion(mlflow, name, "promote", caller, promotion, key)
    mlflow.set_registered_model_tag(name, CHAMPION_HISTORY, json.dumps(history))
    write_audit(mlflow, name, [info.version] + ([before] if before is not None else []), record)
    log.info("%s promoted %s v%d to %s (was %s)", caller.identity, name, info.version, CHAMPION, before)
    return Decision(get_version(mlflow, name, info.version, settings), before, info.version, result, record)


def _move_champion(
    mlflow: MlflowClient,
    name: str,
    action: Literal["promote", "rollback"],
    caller: Caller,
    promotion: PromotionRecord,
    key: bytes,
) -> None:
    """Point ``champion`` at the version of ``promotion``: the signed champion record first, the alias
    last, so that serving never sees the alias on a version the record does not name for longer than
    the two writes take."""
    version = promotion.subject.version
    champion = ChampionRecord(
        name=name,
        version=version,
        action=action,
        identity=caller.identity,
        authenticated=caller.authenticated,
        time=promotion.time if action == "promote" else now_iso(),
        promotion=promotion.signature,
    ).signed(key)
    mlflow.set_registered_model_tag(name, CHAMPION_RECORD, champion.model_dump_json())
    mlflow.set_registered_model_alias(name, CHAMPION, str(version))


def rollback(*, identity: str | None = None, settings: Settings | None = None) -> Decision:
    """Move ``champion`` back to the champion before the current one, or raise :class:`Refused`. The
    caller is resolved as for :func:`approve`; the version restored must still carry a promotion that
    verifies, as serving would refuse it otherwise."""
    settings = settings or get_settings()
    caller = resolve_caller(identity, settings)
    mlflow, name = registry_client(settings), settings.registered_model
    if not model_exists(mlflow, name):
        raise ValueError(
            f"no registered model {name!r} in {settings.resolved_mlflow_uri}: nothing to roll back"
        )
    current = alias_version(mlflow, name, CHAMPION)
    history = _history(mlflow, name)
    earlier = history[:-1] if history and history[-1] == current else history
    target = earlier[-1] if earlier else None
    who = unauthorised(caller, settings)
    reasons = [] if who is None else [f"may not roll back: {who}"]
    promotion: PromotionRecord | None = None
    key = None
    if current is None:
        reasons.append(f"{name} has no champion to roll back")
    elif target is None:
        reasons.append(f"champion v{current} has no previous champion to restore")
    else:
        try:
            restored = lookup_version(mlflow, name, target, settings)
        except ValueError:
            reasons.append(f"the previous champion v{target} no longer exists")
        else:
            if who is None:
                key = signing_key(settings)
                try:
                    promotion = verified_promotion(restored, key)
                except UnverifiedChampion as err:
                    reasons.append(f"serving would refuse the previous champion: {err}")
    if reasons:
        record = _record(
            "rollback", current, caller.identity, reasons, allowed=False, before=current, after=current
        )
        write_audit(mlflow, name, [] if current is None else [current], record)
        raise Refused(f"rollback of {name} {CHAMPION}", reasons)

    assert current is not None and target is not None and promotion is not None and key is not None
    _move_champion(mlflow, name, "rollback", caller, promotion, key)
    mlflow.set_registered_model_tag(name, CHAMPION_HISTORY, json.dumps(earlier))
    why = [f"restored the previous champion v{target} in place of v{current}"]
    record = _record("rollback", target, caller.identity, why, allowed=True, before=current, after=target)
    write_audit(mlflow, name, [current, target], record)
    log.info("%s rolled %s %s back from v%d to v%d", caller.identity, name, CHAMPION, current, target)
    return Decision(get_version(mlflow, name, target, settings), current, target, None, record)
