"""Signed registry decisions (DESIGN.md §8): the approval of a version, the promotion resting on it and
the pointer that makes a version ``champion``, each signed with HMAC-SHA256 over its canonical JSON
under a key that only the promotion gate and serving hold. MLflow write access is not enough to make a
version champion: an alias moved by hand, evidence changed after the promotion, or a record signed
under another key does not verify, and serving refuses it.

The chain, from what serving loads back to the approval:

* ``champion.record`` on the registered model — :class:`ChampionRecord`: the version the gate last made
  champion (by a promotion or a rollback) and the signature of the promotion it rests on;
* ``promotion.record`` on that version — :class:`PromotionRecord`: who promoted it, when, the
  :class:`Subject` it vouches for, and the :class:`ApprovalRecord` it rested on, whole (a later approval
  of the same version cannot break it);
* ``approval.record`` on a version — the latest signed approval, which a promotion takes up.

A :class:`Subject` names the version and the identity of its weights without reading them: the
registration run and the artifact source the checkpoint is downloaded from, and a digest of the
evidence tags (``lineage.*``, ``interbench.*``, ``quality.*``) the gate judged.

The key (:func:`configured_key`): ``WORLDLOOP_SIGNING_KEY`` or ``WORLDLOOP_SIGNING_KEY_FILE`` (on a
cluster, from the Secret ``worldloop-signing-key``); locally, when neither is set, ``HOME/signing.key``,
which the first signature generates (:func:`local_signing_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worldloop.settings import MIN_SIGNING_KEY_BYTES, Profile, Settings

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

APPROVAL_RECORD = "approval.record"  # on a version: its latest signed approval (JSON)
PROMOTION_RECORD = "promotion.record"  # on a version: its signed promotion, the approval inside (JSON)
CHAMPION_RECORD = "champion.record"  # on the registered model: the signed champion pointer (JSON)
EVIDENCE_PREFIXES = ("lineage.", "interbench.", "quality.")  # the version tags a Subject digests
LOCAL_KEY_FILE = "signing.key"  # under HOME, the local profile's key when none is configured

_R = TypeVar("_R", bound="Signed")


class UnverifiedChampion(ValueError):
    """``champion`` names a version whose signed promotion chain does not verify: it was moved outside
    the promotion gate, the version changed since, or the records were signed under another key."""


class Subject(BaseModel):
    """What a record vouches for: one version, and the identity of its weights and evidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int
    run_id: str | None = Field(description="The registration run, whose artifacts hold the checkpoint.")
    source: str = Field(description="The version's artifact URI: where the checkpoint is downloaded from.")
    evidence_sha256: str = Field(description="Of the version's lineage.*, interbench.* and quality.* tags.")


class Signed(BaseModel):
    """A record with an HMAC-SHA256 ``signature`` over the rest of it (its canonical JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signature: str = ""

    def signed(self: _R, key: bytes) -> _R:
        return self.model_copy(update={"signature": _mac(self, key)})

    def verifies(self, key: bytes) -> bool:
        return bool(self.signature) and hmac.compare_digest(self.signature, _mac(self, key))


class ApprovalRecord(Signed):
    kind: Literal["approval"] = "approval"  # each kind its own: one kind's signature never fits another
    subject: Subject
    identity: str
    authenticated: bool = Field(description="True: a Kubernetes user; False: a name asserted locally.")
    reason: str
    time: str = Field(description="UTC, ISO 8601.")


class PromotionRecord(Signed):
    kind: Literal["promotion"] = "promotion"
    subject: Subject
    identity: str
    authenticated: bool
    time: str
    previous_champion: int | None
    approval: ApprovalRecord = Field(description="The approval the promotion rested on, signature included.")


class ChampionRecord(Signed):
    kind: Literal["champion"] = "champion"
    name: str
    version: int
    action: Literal["promote", "rollback"]
    identity: str
    authenticated: bool
    time: str
    promotion: str = Field(description="The signature of the version's promotion record it rests on.")


def _mac(record: Signed, key: bytes) -> str:
    body = record.model_dump(mode="json", exclude={"signature"})
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def subject_of(mv: ModelVersion) -> Subject:
    """The :class:`Subject` of a registered version as the registry holds it now."""
    tags: dict[str, str] = dict(mv.tags)
    evidence = sorted((k, v) for k, v in tags.items() if k.startswith(EVIDENCE_PREFIXES))
    digest = hashlib.sha256(json.dumps(evidence, separators=(",", ":")).encode()).hexdigest()
    return Subject(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id or None,
        source=mv.source or "",
        evidence_sha256=digest,
    )


def read_record(record_type: type[_R], text: str | None) -> _R | None:
    """The record in a tag's ``text``; None when absent or not a record of that type (altered by hand)."""
    if text is None:
        return None
    try:
        return record_type.model_validate_json(text)
    except ValidationError:
        return None


# -- the key ----------------------------------------------------------------------------------------


def checked_key(data: bytes, where: str) -> bytes:
    """``data`` as a key, surrounding whitespace dropped; ValueError naming ``where`` when too short."""
    key = data.strip()  # a Secret created from a file often ends in a newline
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise ValueError(
            f"{where}: a signing key must be at least {MIN_SIGNING_KEY_BYTES} bytes "
            "(e.g. openssl rand -hex 32)"
        )
    return key


def local_key_path(settings: Settings) -> Path:
    return (settings.home / LOCAL_KEY_FILE).resolve()


def configured_key(settings: Settings) -> bytes | None:
    """The key the settings name (``WORLDLOOP_SIGNING_KEY``, else ``..._FILE``, else — locally — an
    existing ``HOME/signing.key``), or None."""
    if settings.signing_key is not None:
        return checked_key(settings.signing_key.get_secret_value().encode(), "WORLDLOOP_SIGNING_KEY")
    path = settings.signing_key_file
    if path is None and settings.profile is Profile.local and local_key_path(settings).is_file():
        path = local_key_path(settings)
    if path is None:
        return None
    try:
        return checked_key(path.read_bytes(), str(path))
    except OSError as err:
        raise ValueError(f"cannot read the signing key file {path}: {err.strerror or err}") from err


def local_signing_key(settings: Settings) -> bytes:
    """The local profile's key: the configured one, else a random key generated into ``HOME/signing.key``
    (owner-only; the first of two racing processes wins and both use its key)."""
    key = configured_key(settings)
    if key is not None:
        return key
    path = local_key_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{LOCAL_KEY_FILE}.{uuid.uuid4().hex[:8]}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    try:
        os.link(draft, path)  # whole, and only if no key is there yet
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return checked_key(path.read_bytes(), str(path))


def verification_key(settings: Settings) -> bytes:
    """The key serving verifies with; :class:`UnverifiedChampion` when there is none (nothing signed
    under this setup can be trusted)."""
    key = configured_key(settings)
    if key is None:
        local = settings.profile is Profile.local
        where = f"{local_key_path(settings)} does not exist" if local else "none is set"
        raise UnverifiedChampion(
            f"no signing key to verify the champion with ({where}): set WORLDLOOP_SIGNING_KEY or "
            "WORLDLOOP_SIGNING_KEY_FILE to the key the promotion gate signs with"
        )
    return key


# -- verifying the champion -------------------------------------------------------------------------


def _changed(signed: Subject, now: Subject) -> str:
    if signed.evidence_sha256 != now.evidence_sha256:
        return "its evidence tags (lineage.*, interbench.*, quality.*)"
    fields = [f for f in ("name", "version", "run_id", "source") if getattr(signed, f) != getattr(now, f)]
    return "its " + ", ".join(fields)


def verified_promotion(mv: ModelVersion, key: bytes) -> PromotionRecord:
    """The signed promotion of ``mv``, checked under ``key``: its signature, its approval's, and that the
    version is still the one both vouch for; raises :class:`UnverifiedChampion` saying which does not."""
    version = int(mv.version)
    promotion = read_record(PromotionRecord, dict(mv.tags).get(PROMOTION_RECORD))
    if promotion is None:
        raise UnverifiedChampion(f"v{version} has no signed promotion record: it never passed the gate")
    if not promotion.verifies(key):
        raise UnverifiedChampion(f"the promotion record of v{version} does not verify under this key")
    if not promotion.approval.verifies(key) or promotion.approval.subject != promotion.subject:
        raise UnverifiedChampion(f"the approval that v{version}'s promotion rests on does not verify")
    now = subject_of(mv)
    if promotion.subject != now:
        raise UnverifiedChampion(f"{_changed(promotion.subject, now)} changed since v{version} was promoted")
    return promotion


def verify_champion(model_tags: Mapping[str, str], mv: ModelVersion, key: bytes) -> PromotionRecord:
    """The promotion that made ``mv`` champion, checked link by link under ``key`` from the champion
    record on the registered model (``model_tags``); raises :class:`UnverifiedChampion` naming the first
    link that does not hold."""
    name, version = mv.name, int(mv.version)
    prefix = f"{name}@champion names v{version}, refused"
    champion = read_record(ChampionRecord, model_tags.get(CHAMPION_RECORD))
    if champion is None:
        raise UnverifiedChampion(f"{prefix}: no signed champion record (the alias was set outside the gate)")
    if not champion.verifies(key):
        raise UnverifiedChampion(f"{prefix}: the champion record does not verify under this key")
    if (champion.name, champion.version) != (name, version):
        raise UnverifiedChampion(
            f"{prefix}: the promotion gate made v{champion.version} champion (the alias was moved outside it)"
        )
    try:
        promotion = verified_promotion(mv, key)
    except UnverifiedChampion as err:
        raise UnverifiedChampion(f"{prefix}: {err}") from None
    if promotion.signature != champion.promotion:
        raise UnverifiedChampion(f"{prefix}: the champion record rests on another promotion of v{version}")
    return promotion


__all__ = [
    "APPROVAL_RECORD",
    "CHAMPION_RECORD",
    "EVIDENCE_PREFIXES",
    "PROMOTION_RECORD",
    "ApprovalRecord",
    "ChampionRecord",
    "PromotionRecord",
    "Signed",
    "Subject",
    "UnverifiedChampion",
    "checked_key",
    "configured_key",
    "local_signing_key",
    "read_record",
    "subject_of",
    "verification_key",
    "verified_promotion",
    "verify_champion",
]
