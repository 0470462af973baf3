"""Shared by the multi-process training tests (imported by module name, pytest puts this folder on
sys.path): ``worldloop train`` under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_cli(args: Sequence[str], *, nproc: int, env: dict[str, str] | None = None) -> None:
    """``python -m worldloop.cli.main train ARGS`` in ``nproc`` processes (torchrun when > 1)."""
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
    run = subprocess.run(
        [sys.executable, *(launcher if nproc > 1 else []), "-m", "worldloop.cli.main", "train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env} if env else None,
    )
    assert run.returncode == 0, run.stderr[-3000:]
