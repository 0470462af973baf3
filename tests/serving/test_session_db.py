"""Session records in the database: limits, owners, expiry, restarts, two replicas racing.

Each test runs on a SQLite file under tmp_path and on a throwaway Postgres server (started here from
the ``initdb``/``pg_ctl`` on PATH; skipped where there are none), as the cluster runs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worldloop.serving.protocol import FrameFormat, ModelInfo
from worldloop.serving.session_db import SessionStore, connect
from worldloop.serving.sessions import ApiError, SessionRecord


def _record(owner: str, *, prompt: str = "a courtyard") -> SessionRecord:
    return SessionRecord(
        id=SessionStore.new_id(),
        owner=owner,
        prompt=prompt,
        instruction=None,
        seed=2**53 - 1,
        frames=FrameFormat(format="png"),
        model=ModelInfo(uri="preset:tiny", preset="tiny"),
        width=64,
        height=64,
        fps=16.0,
        frames_per_block=8,
    )


def _started(store: SessionStore, owner: str, **kwargs: str) -> SessionRecord:
    """Reserved and given its first frame, as the ingress does once the stream has started."""
    record = _record(owner, **kwargs)
    store.reserve(record)
    record.last_frame = b"\x89PNG frame 0 of " + record.id.encode()
    assert store.save(record)
    return record


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A Postgres server of its own on a free port; the URL of its ``postgres`` database."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no initdb/pg_ctl on PATH (a PostgreSQL server install)")
    # Outside pytest's tmp folders: as root, the server runs as the user postgres, which must reach it.
    folder = Path(tempfile.mkdtemp(prefix="worldloop-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # Postgres refuses to run as root
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]}: {done.stderr}"

    data = str(folder / "data")
    run(initdb, "-D", data, "-A", "trust", "-U", "worldloop")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    run(pg_ctl, "-D", data, "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg2://worldloop@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'sessions.db'}"  # its folder is created
    return str(request.getfixturevalue("postgres"))


def _store(url: str, *, scope: str | None = None, per_owner: int = 2, total: int = 3) -> SessionStore:
    # by default a scope of its own: the module's tests share the Postgres server
    scope = scope or "test-" + uuid.uuid4().hex
    return SessionStore(url, scope=scope, per_owner=per_owner, total=total, idle_s=10.0)


def test_limits_owners_and_expiry(url: str) -> None:
    store = _store(url)
    s1, s2 = _started(store, "a"), _started(store, "a")
    with pytest.raises(ApiError) as per_owner:
        store.reserve(_record("a"))
    assert per_owner.value.status == 429
    _started(store, "b")
    with pytest.raises(ApiError, match="server") as total:
        store.reserve(_record("c"))
    assert total.value.status == 429
    with pytest.raises(ApiError) as other:
        store.get(s1.id, "b")  # someone else's session is as good as absent
    assert other.value.status == 404
    for bad in ("s-nope", "", "s-" + "\x00" * 16, s1.id + "x"):
        with pytest.raises(ApiError) as unknown:
            store.get(bad, "a")
        assert unknown.value.status == 404

    s1.last_active -= 11.0
    assert store.save(s1)
    store.reserve(_record("c"))  # an idle session no longer counts, even before it is removed
    assert [r.id for r in store.expired()] == [s1.id]
    assert [r.id for r in store.owned("a")] == [s2.id]
    assert not store.save(s1)  # gone: the ingress closes its socket
    assert store.remove(s2.id) and not store.remove(s2.id)


def test_records_survive_a_new_store_on_the_same_database(url: str) -> None:
    first = _store(url, scope="restarted")
    record = _started(first, "a", prompt="a room\x00with a NUL and ünïcode")
    record.instruction = "open the door"
    record.frame_index, record.blocks, record.recaches, record.resumes = 16, 2, 1, 1
    record.last_frame = bytes(range(256)) * 40
    record.model = record.model.model_copy(update={"version": "7"})
    assert first.save(record)
    first.close()

    again = _store(url, scope="restarted")  # what a restarted ingress replica opens
    loaded = again.get(record.id, "a")
    assert loaded == record  # every field, the last frame byte for byte
    assert loaded.info(10.0).frame_index == 16
    again.reserve(_record("a"))
    with pytest.raises(ApiError) as limited:  # the limits count what the old store reserved
        again.reserve(_record("a"))
    assert limited.value.status == 429


def test_scopes_keep_applications_apart(url: str) -> None:
    one, two = _store(url), _store(url, per_owner=1)
    record = _started(one, "a")
    with pytest.raises(ApiError):
        two.get(record.id, "a")
    assert two.owned("a") == [] and two.count() == 0 and one.count() == 1
    _started(two, "a")  # one's session does not count towards two's limit
    assert record.id not in [r.id for r in two.expired(now=record.last_active + 60)]
    assert one.get(record.id, "a") == record


def test_two_stores_cannot_both_pass_a_limit(url: str) -> None:
    """Two ingress replicas (two stores, two connection pools, one database) race for the slots."""
    scope = "race-" + uuid.uuid4().hex
    stores = [_store(url, scope=scope, per_owner=3, total=10) for _ in range(2)]
    outcomes: list[int] = []
    barrier = threading.Barrier(8)

    def reserve(store: SessionStore) -> None:
        barrier.wait()
        try:
            store.reserve(_record("a"))
            outcomes.append(201)
        except ApiError as err:
            outcomes.append(err.status)

    threads = [threading.Thread(target=reserve, args=(stores[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [201] * 3 + [429] * 5
    assert stores[0].count() == 3


def test_database_trouble_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a database URL") as bad:
        connect("postgres ql://user:hunter2@host/db")
    assert "hunter2" not in str(bad.value)
    with pytest.raises(ValueError, match="no driver"):
        connect("mysql+nosuchdriver://user:hunter2@host/db")

    path = tmp_path / "sessions.db"
    store = _store(f"sqlite:///{path}")
    record = _started(store, "a")
    store.engine.dispose()
    for file in tmp_path.glob("sessions.db*"):
        file.unlink()
    path.mkdir()  # the database cannot be opened any more
    with pytest.raises(ApiError) as down:
        store.get(record.id, "a")
    assert down.value.status == 503 and "session database" in down.value.message
    shutil.rmtree(path)
