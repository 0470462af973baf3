"""Session records in the platform's database, so that they outlive the ingress replica (DESIGN.md §9).

One SQLAlchemy Core layer over SQLite (local: a file under ``WORLDLOOP_HOME``) and Postgres (a cluster:
the instance MLflow uses). A record holds everything it takes to rebuild a session's stream: prompt,
instruction, seed, counters and the last frame sent. It is written when the session is created and
once per step message after its blocks were generated (before they are sent), so a client never sees
a frame that a restarted ingress does not know.

Records belong to a *scope* (the Serve application's name): two applications on one database keep
their sessions, limits and expiry apart, while a new cluster that runs the same application (a
RayService upgrade) finds the sessions of the old one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from worldloop.serving.protocol import FrameFormat, ModelInfo
from worldloop.serving.sessions import ApiError, SessionRecord

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"s-[A-Za-z0-9_-]{16}")  # what new_id makes; anything else names no session
SQLITE_BUSY_MS = 30_000  # how long a SQLite writer waits for another one (two replicas, one file)

metadata = sa.MetaData()
# Prompt and instruction sit in a JSON column: they may hold U+0000, which Postgres text columns refuse
# and its json type keeps (as the escape \u0000).
sessions_table = sa.Table(
    "worldloop_sessions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("scope", sa.String(128), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("text", sa.JSON, nullable=False),  # {"prompt": str, "instruction": str | None}
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("frames", sa.JSON, nullable=False),  # FrameFormat
    sa.Column("model", sa.JSON, nullable=False),  # ModelInfo
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("fps", sa.Float, nullable=False),
    sa.Column("frames_per_block", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_active", sa.Float, nullable=False),
    sa.Column("frame_index", sa.Integer, nullable=False),
    sa.Column("blocks", sa.Integer, nullable=False),
    sa.Column("recaches", sa.Integer, nullable=False),
    sa.Column("resumes", sa.Integer, nullable=False),
    sa.Column("last_frame", sa.LargeBinary, nullable=True),  # NULL until the stream has started
    sa.Index("worldloop_sessions_scope_owner", "scope", "owner"),
)
# One row per scope, updated by every reservation: the row lock (Postgres) or the write lock (SQLite)
# that UPDATE takes makes count-then-insert atomic, so two ingress replicas cannot both pass a limit.
scopes_table = sa.Table(
    "worldloop_session_scopes",
    metadata,
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("reservations", sa.BigInteger, nullable=False),
)


def connect(url: str) -> Engine:
    """An engine on ``url`` (``sqlite:///PATH`` or ``postgresql+psycopg2://...``) with the tables made.

    SQLite gets WAL (readers do not wait for the writer) and a busy timeout (writers wait for each
    other instead of failing); its folder is created.
    """
    try:
        parsed = sa.engine.make_url(url)
    except exc.ArgumentError:  # its text is not repeated: it may hold a password
        raise ValueError(
            "the session database URL is not a database URL (e.g. sqlite:///PATH or "
            "postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_MS / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cursor.close()

    else:
        try:
            engine = sa.create_engine(parsed, pool_pre_ping=True)
        except (exc.NoSuchModuleError, ModuleNotFoundError) as err:
            raise ValueError(f"session database URL {parsed!r}: no driver for it ({err})") from None
    with _unavailable("creating the session tables"):
        try:
            metadata.create_all(engine)
        except exc.DBAPIError:  # another replica created them at the same moment
            metadata.create_all(engine)
    return engine


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Database failures become 503 (the JSON error body; the client may retry)."""
    try:
        yield
    except exc.DBAPIError as err:
        log.warning("session database: %s failed: %s", what, err)
        raise ApiError(503, f"the session database is unavailable ({what})") from err


class SessionStore:
    """Session records in a database, with per-owner and global limits and idle expiry.

    Every method is one short transaction and safe to call from several threads and processes.
    Sessions idle for longer than ``idle_s`` no longer count towards the limits, even before
    :meth:`expired` removes them.
    """

    def __init__(self, url: str, *, scope: str, per_owner: int, total: int, idle_s: float) -> None:
        self.scope, self.per_owner, self.total, self.idle_s = scope, per_owner, total, idle_s
        self.engine = connect(url)

    @staticmethod
    def new_id() -> str:
        return "s-" + secrets.token_urlsafe(12)

    def reserve(self, record: SessionRecord) -> None:
        """Add ``record`` if its owner and the server are under their limits (else 429)."""
        with _unavailable("reserving a session"):
            try:
                self._reserve(record)
            except exc.IntegrityError:  # the scope's first row, inserted by another replica just now
                self._reserve(record)

    def _reserve(self, record: SessionRecord) -> None:
        s = sessions_table
        with self.engine.begin() as conn:
            self._lock_scope(conn)
            live = sa.and_(s.c.scope == self.scope, s.c.last_active >= time.time() - self.idle_s)
            mine = conn.scalar(sa.select(sa.func.count()).where(live, s.c.owner == record.owner)) or 0
            if mine >= self.per_owner:
                raise ApiError(429, f"this key already holds {mine} sessions (limit {self.per_owner})")
            held = conn.scalar(sa.select(sa.func.count()).where(live)) or 0
            if held >= self.total:
                raise ApiError(429, f"the server holds {held} sessions (its limit)")
            conn.execute(sa.insert(s).values(id=record.id, scope=self.scope, **_row(record)))

    def _lock_scope(self, conn: Connection) -> None:
        t = scopes_table
        bump = sa.update(t).where(t.c.scope == self.scope).values(reservations=t.c.reservations + 1)
        if conn.execute(bump).rowcount == 0:
            conn.execute(sa.insert(t).values(scope=self.scope, reservations=1))

    def save(self, record: SessionRecord) -> bool:
        """Write ``record``'s counters, instruction, model and last frame; False when it is gone
        (deleted or expired meanwhile)."""
        s = sessions_table
        values = _row(record)
        for fixed in ("owner", "seed", "frames", "width", "height", "fps", "frames_per_block", "created_at"):
            del values[fixed]
        with _unavailable("saving a session"), self.engine.begin() as conn:
            return bool(conn.execute(sa.update(s).where(self._named(record.id)).values(**values)).rowcount)

    def get(self, session: str, owner: str) -> SessionRecord:
        """``session``'s record as stored now (404 when absent or someone else's)."""
        if SESSION_ID.fullmatch(session):
            with _unavailable("reading a session"), self.engine.connect() as conn:
                row = conn.execute(sa.select(sessions_table).where(self._named(session))).first()
            if row is not None and row.owner == owner and row.last_frame is not None:
                return _record(row)
        raise ApiError(404, f"no session {session}")  # someone else's session is as good as absent

    def owned(self, owner: str) -> list[SessionRecord]:
        s = sessions_table
        query = (
            sa.select(s)
            .where(s.c.scope == self.scope, s.c.owner == owner, s.c.last_frame.is_not(None))
            .order_by(s.c.created_at)
        )
        with _unavailable("listing sessions"), self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def remove(self, session: str) -> bool:
        """Delete ``session``; False when it was not there."""
        with _unavailable("deleting a session"), self.engine.begin() as conn:
            return bool(conn.execute(sa.delete(sessions_table).where(self._named(session))).rowcount)

    def expired(self, now: float | None = None) -> list[SessionRecord]:
        """Remove and return the sessions without a step for longer than ``idle_s``."""
        s = sessions_table
        cutoff = (time.time() if now is None else now) - self.idle_s
        stale = sa.and_(s.c.scope == self.scope, s.c.last_active < cutoff)
        with _unavailable("expiring sessions"), self.engine.begin() as conn:
            gone = [_record(row) for row in conn.execute(sa.select(s).where(stale))]
            if gone:
                conn.execute(sa.delete(s).where(stale, s.c.id.in_([r.id for r in gone])))
        return gone

    def count(self) -> int:
        query = sa.select(sa.func.count()).where(sessions_table.c.scope == self.scope)
        with _unavailable("counting sessions"), self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def close(self) -> None:
        self.engine.dispose()

    def _named(self, session: str) -> sa.ColumnElement[bool]:
        s = sessions_table
        return sa.and_(s.c.id == session, s.c.scope == self.scope)


def _row(record: SessionRecord) -> dict[str, Any]:
    """``record``'s columns (without id and scope)."""
    return {
        "owner": record.owner,
        "text": {"prompt": record.prompt, "instruction": record.instruction},
        "seed": record.seed,
        "frames": record.frames.model_dump(mode="json"),
        "model": record.model.model_dump(mode="json"),
        "width": record.width,
        "height": record.height,
        "fps": record.fps,
        "frames_per_block": record.frames_per_block,
        "created_at": record.created_at,
        "last_active": record.last_active,
        "frame_index": record.frame_index,
        "blocks": record.blocks,
        "recaches": record.recaches,
        "resumes": record.resumes,
        "last_frame": record.last_frame or None,
    }


def _record(row: sa.Row[Any]) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        owner=row.owner,
        prompt=row.text["prompt"],
        instruction=row.text["instruction"],
        seed=row.seed,
        frames=FrameFormat.model_validate(row.frames),
        model=ModelInfo.model_validate(row.model),
        width=row.width,
        height=row.height,
        fps=row.fps,
        frames_per_block=row.frames_per_block,
        created_at=row.created_at,
        last_active=row.last_active,
        frame_index=row.frame_index,
        blocks=row.blocks,
        recaches=row.recaches,
        resumes=row.resumes,
        last_frame=bytes(row.last_frame or b""),
    )
