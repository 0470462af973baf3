"""Session records, API keys and limits at the ingress (DESIGN.md §9).

A session's *record* lives at the ingress, apart from its stream (which lives in a generator replica):
prompt, instruction, seed, frame counters and the last frame sent. That is all it takes to rebuild the
stream elsewhere when the replica holding it dies or a new model version is promoted, which is how
sessions survive both. Records are owned by an API key (or by nobody when keys are off); a key only
ever sees its own sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from pydantic import SecretStr

from worldloop.serving.protocol import FrameFormat, ModelInfo, SessionInfo


class ApiError(Exception):
    """A client error with its HTTP status; rendered as ``{"error": {"status", "message"}}``."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def key_id(key: str) -> str:
    """A stable, non-secret name for an API key (records and logs never hold the key)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    """Checks presented keys in constant time; ``None`` keys = open access (owner ``anonymous``)."""

    def __init__(self, keys: list[SecretStr] | None) -> None:
        self._keys = None if keys is None else [k.get_secret_value().strip().encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    def owner(self, presented: str | None) -> str:
        """The owner id for ``presented``; raises 401 when keys are on and it is missing or wrong."""
        if self._keys is None:
            return "anonymous"
        if not presented:
            raise ApiError(401, "missing API key (Authorization: Bearer KEY, X-API-Key or ?api_key=)")
        given = presented.strip().encode()
        if not any(hmac.compare_digest(given, k) for k in self._keys):
            raise ApiError(401, "invalid API key")
        return key_id(presented.strip())


@dataclass
class SessionRecord:
    id: str
    owner: str
    prompt: str
    instruction: str | None
    seed: int
    frames: FrameFormat
    model: ModelInfo
    width: int
    height: int
    fps: float
    frames_per_block: int
    created_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.time)
    frame_index: int = 0
    blocks: int = 0
    recaches: int = 0
    resumes: int = 0
    last_frame: bytes = b""  # encoded in ``frames.format``: what a rebuilt stream starts from
    socket: str | None = None  # token of the play socket attached now (the newest one wins)

    def info(self, idle_s: float) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            prompt=self.prompt,
            instruction=self.instruction,
            width=self.width,
            height=self.height,
            fps=self.fps,
            frames_per_block=self.frames_per_block,
            frame_index=self.frame_index,
            blocks=self.blocks,
            recaches=self.recaches,
            resumes=self.resumes,
            frames=self.frames,
            model=self.model,
            created_at=self.created_at,
            last_active=self.last_active,
            expires_after_s=max(0.0, self.last_active + idle_s - time.time()),
        )


class SessionStore:
    """In-memory records with per-owner and global limits and idle expiry (thread-safe)."""

    def __init__(self, *, per_owner: int, total: int, idle_s: float) -> None:
        self.per_owner, self.total, self.idle_s = per_owner, total, idle_s
        self._records: dict[str, SessionRecord] = {}
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return "s-" + secrets.token_urlsafe(12)

    def reserve(self, record: SessionRecord) -> None:
        """Add ``record`` if its owner and the server are under their limits (else 429)."""
        with self._lock:
            mine = sum(r.owner == record.owner for r in self._records.values())
            if mine >= self.per_owner:
                raise ApiError(429, f"this key already holds {mine} sessions (limit {self.per_owner})")
            if len(self._records) >= self.total:
                raise ApiError(429, f"the server holds {len(self._records)} sessions (its limit)")
            self._records[record.id] = record

    def get(self, session: str, owner: str) -> SessionRecord:
        record = self._records.get(session)
        if record is None or record.owner != owner:  # someone else's session is as good as absent
            raise ApiError(404, f"no session {session}")
        return record

    def owned(self, owner: str) -> list[SessionRecord]:
        return sorted((r for r in self._records.values() if r.owner == owner), key=lambda r: r.created_at)

    def remove(self, session: str) -> SessionRecord | None:
        with self._lock:
            return self._records.pop(session, None)

    def expired(self, now: float | None = None) -> list[SessionRecord]:
        """Remove and return the sessions without a step (or REST touch) for longer than ``idle_s``."""
        now = time.time() if now is None else now
        with self._lock:
            gone = [r for r in self._records.values() if now - r.last_active > self.idle_s]
            for r in gone:
                del self._records[r.id]
        return gone

    def __len__(self) -> int:
        return len(self._records)
