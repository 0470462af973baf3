"""``worldloop serve run`` stops cleanly on SIGINT (Ctrl-C) and on SIGTERM (kill, the kubelet): within
10 s, with Serve and the local Ray it started shut down and its port free again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

WORLDLOOP = Path(sys.executable).with_name("worldloop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pgid: int) -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-g", str(pgid)], capture_output=True, text=True)
    return found.stdout.splitlines()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_run_stops_on_a_signal_and_frees_its_port(tmp_path: Path, sig: signal.Signals) -> None:
    port = _free_port()
    env = {**os.environ, "WORLDLOOP_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    server = subprocess.Popen(
        [str(WORLDLOOP), "serve", "run", "--model", "preset:tiny", "--device", "cpu", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ray's processes can be found and cleaned up
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(1)
        sent = time.monotonic()
        server.send_signal(sig)
        code = server.wait(timeout=10)
        took = time.monotonic() - sent
        output = server.stdout.read() if server.stdout else ""
        assert code == 0, output[-3000:]
        assert "stopping Serve and Ray" in output and "worldloop: stopped" in output
        assert took < 10
        assert not _port_open(port)
        time.sleep(2)  # Ray's own processes end right after the driver
        assert _alive(server.pid) == [], "processes of the stopped server are still running"
    finally:
        if server.poll() is None or _alive(server.pid):
            os.killpg(server.pid, signal.SIGKILL)
