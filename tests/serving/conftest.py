"""One local Ray + Serve for the serving tests: the real app on ``preset:tiny`` at 64×64 (CPU).

Apps are deployed once per test package and shared; tests that kill replicas or change settings use
their own applications (other names and route prefixes) on the same Serve instance.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serving_fixtures import write_responsive_checkpoint

TINY = {"device": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str  # ends with "/"
    name: str


class ServeCluster:
    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def deploy(self, name: str, args: dict[str, Any], *, settings: dict[str, Any] | None = None) -> Server:
        """Deploy the real application (``build_app``) as ``name`` at ``/name/`` (``main``: at ``/``)."""
        from ray import serve

        from worldloop.serving.app import build_app

        app = build_app({**TINY, "ingress_cpus": 0.1, **args}, settings=settings)
        prefix = "/" if name == "main" else f"/{name}"
        serve.run(app, name=name, route_prefix=prefix)
        return Server(f"{self.base}{prefix.rstrip('/')}/", name)

    def delete(self, name: str) -> None:
        from ray import serve

        serve.delete(name)


@pytest.fixture(scope="package")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_responsive_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))


@pytest.fixture(scope="package")
def serve_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCluster]:
    ray = pytest.importorskip("ray")
    from ray import serve

    if ray.is_initialized():  # an earlier test's local Ray (e.g. curation): ours needs its own sizing
        ray.shutdown()
    # The ingress replicas keep session records in a database (each app under its own name); the
    # environment of ray.init is the replicas' environment. Not the default under ./.worldloop.
    db = tmp_path_factory.mktemp("sessions") / "sessions.db"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WORLDLOOP_SERVE_SESSION_DB", f"sqlite:///{db}")
        # Logical CPUs: replicas and workers reserve CPUs; the tiny model needs a fraction of a core each.
        ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServeCluster(port)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="package")
def live_server(serve_cluster: ServeCluster, tiny_checkpoint: Path) -> Server:
    """The main app at ``/``: the responsive tiny checkpoint, no API keys, one replica, one worker."""
    return serve_cluster.deploy("main", {"model": str(tiny_checkpoint)})
