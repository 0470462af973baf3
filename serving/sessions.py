"""Session records, API keys and client errors at the ingress (DESIGN.md §9).

A session's *record* is kept apart from its stream (which lives in a generator replica): prompt,
instruction, seed, frame counters and the last frame sent. That is all it takes to rebuild the stream
elsewhere when the replica holding it dies or a new model version is promoted, which is how sessions
survive both; records are stored in the platform's database (:mod:`.session_db`), which is how they
survive the ingress. Records are owned by an API key (or by nobody when keys are off); a key only ever
sees its own sessions.
"""

from __future__ import annotations

import hashlib
import hmac
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
