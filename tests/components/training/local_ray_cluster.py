"""A Ray cluster of several nodes on this machine, for tests (imported by module name, pytest puts this
folder on sys.path): a head (GCS, dashboard with the Job Submission API) and more worker nodes, each
a ``ray start --block`` process of our own, on free ports and in a private temp dir, with token
authentication. Stopping ends exactly those processes (their process groups), never another Ray
running on the machine (``ray stop`` would stop every one)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

RAY = str(Path(sys.executable).with_name("ray"))
_START_TIMEOUT_S = 90.0
_STOP_GRACE_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_ports() -> list[str]:
    """Every port a node listens on, free now: several Ray clusters may share this machine."""
    ports = {
        "--node-manager-port": _free_port(),
        "--object-manager-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
    }
    return [str(x) for item in ports.items() for x in item] + [
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",
    ]


@dataclass(frozen=True)
class NodeSpec:
    num_cpus: int = 1
    resources: Mapping[str, float] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)  # this node's own (its workers inherit it)


@dataclass
class LocalRayCluster:
    root: Path
    gcs_port: int
    dashboard_port: int
    token: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client(self) -> JobSubmissionClient:
        return JobSubmissionClient(self.dashboard, headers={"Authorization": f"Bearer {self.token}"})

    def _start_node(self, spec: NodeSpec, *, head: bool) -> None:
        args = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
        if head:
            args += [
                "--head",
                "--port",
                str(self.gcs_port),
                "--dashboard-port",
                str(self.dashboard_port),
                "--dashboard-host",
                "127.0.0.1",
                "--include-dashboard",
                "true",
                "--ray-client-server-port",
                str(_free_port()),
                "--temp-dir",
                str(self.root),
            ]
        else:
            args += ["--address", self.address]
        args += [
            "--num-cpus",
            str(spec.num_cpus),
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(80 * 2**20),
        ]
        if spec.resources:
            args += ["--resources", json.dumps(dict(spec.resources))]
        log = (self.root / f"node-{len(self.processes)}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                args + _node_ports(),
                env={**self.env, **spec.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def wait_for_nodes(self, count: int) -> None:
        """Until ``count`` nodes are alive (the dashboard's state API), or a node's process died."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            for i, p in enumerate(self.processes):
                if p.poll() is not None:
                    log = (self.root / f"node-{i}.log").read_text(errors="replace")
                    raise RuntimeError(f"ray node {i} exited with {p.returncode}:\n{log[-3000:]}")
            if self.alive_nodes() >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {count} Ray nodes alive after {_START_TIMEOUT_S:.0f} s ({self.root})")

    def alive_nodes(self) -> int:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            f"{self.dashboard}/api/v0/nodes?detail=false&limit=100",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body: dict[str, Any] = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return 0
        nodes = body.get("data", {}).get("result", {}).get("result", [])
        return sum(1 for n in nodes if n.get("state") == "ALIVE")

    def run_job(self, entrypoint: Sequence[str], *, timeout_s: float = 300.0) -> tuple[JobStatus, str]:
        """Submit ``entrypoint`` through the Job Submission API (what a KubeRay RayJob's submitter does)
        and wait: its final status and logs."""
        client = self.client()
        job = client.submit_job(entrypoint=subprocess.list2cmdline(list(entrypoint)))
        deadline = time.monotonic() + timeout_s
        status = client.get_job_status(job)
        while not status.is_terminal():
            if time.monotonic() > deadline:
                client.stop_job(job)
                raise TimeoutError(
                    f"Ray job {job} not done after {timeout_s:.0f} s:\n{client.get_job_logs(job)}"
                )
            time.sleep(1.0)
            status = client.get_job_status(job)
        return status, client.get_job_logs(job)

    def stop(self) -> None:
        """SIGTERM to each node's process group, then SIGKILL what is left after a grace period."""
        for p in reversed(self.processes):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for p in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # the group outlives its leader: raylet, GCS
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(nodes: Sequence[NodeSpec], *, env: Mapping[str, str] | None = None) -> LocalRayCluster:
    """A head with ``nodes[0]`` and one more node per further spec, all alive on return."""
    root = Path(tempfile.mkdtemp(prefix="wlray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    token = secrets.token_hex(16)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    cluster = LocalRayCluster(
        root=root,
        gcs_port=_free_port(),
        dashboard_port=_free_port(),
        token=token,
        env={
            **base,
            **(env or {}),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
        },
    )
    try:
        cluster._start_node(nodes[0], head=True)
        cluster.wait_for_nodes(1)
        for spec in nodes[1:]:
            cluster._start_node(spec, head=False)
        cluster.wait_for_nodes(len(nodes))
    except BaseException:
        cluster.stop()
        raise
    return cluster
