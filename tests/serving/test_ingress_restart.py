"""Sessions outlive the ingress replica: its records are in the session database (a SQLite file here).

The ingress replica is killed with ``ray.kill`` while a play socket is open; Serve starts a new one,
which knows nothing in memory. A reconnect to the same session id resumes from the stored last frame
(byte for byte) and the numbering continues; the REST API still has every session and its counters.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from worldloop.serving import protocol as p
from worldloop.serving.client import Client

pytestmark = pytest.mark.slow
APP = "durable"


def _ingress_replica():  # type: ignore[no-untyped-def]
    import ray

    named = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#Ingress#")
    ]
    assert len(named) == 1, named
    return ray.get_actor(named[0]["name"], namespace=named[0]["namespace"])


def _open(url: str, *, within_s: float = 90.0) -> tuple[ClientConnection, p.Hello, bytes]:
    """A play socket on ``url`` once the (restarted) ingress answers: the socket, its hello, frame."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            ws = connect(url, open_timeout=30, max_size=64 * 1024 * 1024)
            hello = json.loads(ws.recv(timeout=60))
            assert hello["type"] == "hello", hello
            frame = ws.recv(timeout=60)
            assert isinstance(frame, bytes)
            return ws, p.Hello.model_validate(hello), frame
        except (OSError, InvalidStatus, ConnectionClosed):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _step(ws: ClientConnection, keys: list[str]) -> tuple[p.BlockMessage, list[bytes]]:
    ws.send(json.dumps({"type": "step", "keys": keys}))
    header = p.BlockMessage.model_validate_json(ws.recv(timeout=120))
    frames = [ws.recv(timeout=60) for _ in range(header.count)]
    assert all(isinstance(f, bytes) for f in frames)
    return header, frames  # type: ignore[return-value]


def test_sessions_survive_the_ingress_replica(serve_cluster, tiny_checkpoint, tmp_path: Path) -> None:
    import ray

    db = f"sqlite:///{tmp_path / 'sessions.db'}"
    server = serve_cluster.deploy(APP, {"model": str(tiny_checkpoint)}, settings={"serve_session_db": db})
    try:
        client = Client(server.url)
        session = client.create_session("a courtyard", seed=4, frame_format="png").id
        idle = client.create_session("a quiet hall", seed=5).id  # created, never played

        # 1. A raw play socket, so that frames are compared as the bytes the client received.
        ws, hello, _ = _open(client.socket_url(session))
        assert not hello.resumed
        before, frames = _step(ws, ["w"])
        last = frames[-1]
        ray.kill(_ingress_replica(), no_restart=True)  # mid-session: the socket is still open
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=60)

        # 2. The same session id on the new replica: the stored last frame, byte for byte.
        ws, hello, frame = _open(client.socket_url(session))
        try:
            assert hello.resumed and hello.session.id == session
            assert hello.first_index == before.first_index + before.count - 1
            assert frame == last
            after, frames = _step(ws, ["w"])
        finally:
            ws.close()
        assert after.first_index == hello.first_index + 1 and after.block == before.block + 1
        info = client.get_session(session)
        last_index = after.first_index + after.count - 1
        assert (info.frame_index, info.blocks, info.resumes) == (last_index, after.block, 1)
        assert httpx.get(f"{server.url}v1/sessions/{session}/frame", timeout=60).content == frames[-1]
        assert sorted(s.id for s in client.list_sessions()) == sorted([session, idle])

        # 3. The SDK's socket across a second kill: it reconnects and resumes by itself.
        with client.play(session, reconnects=8) as play:
            first = play.step(keys=["d"])[0]
            ray.kill(_ingress_replica(), no_restart=True)
            second = play.step(keys=["d"])[0]  # reconnects to the new replica, resends the step
            assert play.connects == 2 and play.hello is not None and play.hello.resumed
            assert play.hello.first_index == first.last_index
        assert second.header.first_index == first.last_index + 1
        assert second.header.block == first.header.block + 1
        assert not np.array_equal(first.frames[-1], second.frames[-1])
        info = client.get_session(session)
        assert (info.blocks, info.resumes) == (second.header.block, 2)
        assert info.frame_index == second.last_index
        for s in (session, idle):
            client.delete_session(s)
        assert client.list_sessions() == []
    finally:
        serve_cluster.delete(APP)
