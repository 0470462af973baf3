"""DeepSpeed's JIT-built C++ ops, built without a silent hang.

DeepSpeed builds its shared-memory communication op (``deepspeed_shm_comm``) the first time
``deepspeed.init_distributed`` runs, through ``torch.utils.cpp_extension.load``, which guards the build
folder with a plain ``lock`` file. A process killed during that minute-long build (Ctrl-C twice, an
OOM kill, a pod evicted) leaves the file behind, and every later run waits on it forever without a word.

Here the build runs first, under an OS lock (``flock`` on ``worldloop.flock`` in the same folder) that
the kernel drops when its holder dies. Whoever holds it and finds torch's ``lock`` knows that lock's
builder is gone, removes it (with a warning naming it) and builds. Waiting for a live builder has a
timeout (``WORLDLOOP_OP_BUILD_TIMEOUT_S``, default 900 s), logs every 15 s and ends with an error that
names the files and how to clear them. ``make install`` builds the op once, so runs only load it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SHM_OP = "ShareMemCommBuilder"
GUARD_FILE = "worldloop.flock"
TORCH_LOCK = "lock"  # torch.utils.cpp_extension's FileBaton in the build folder
DEFAULT_TIMEOUT_S = 900.0
LOG_EVERY_S = 15.0


class OpBuildTimeout(RuntimeError):
    """Another process held the op's build folder past the timeout."""


def build_directory(name: str) -> Path:
    """Where torch builds extension ``name`` (``TORCH_EXTENSIONS_DIR`` or its default)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def timeout_from_env() -> float:
    raw = os.environ.get("WORLDLOOP_OP_BUILD_TIMEOUT_S", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"WORLDLOOP_OP_BUILD_TIMEOUT_S must be a number of seconds, got {raw!r}") from None


@contextlib.contextmanager
def exclusive(path: Path, *, timeout_s: float, what: str, poll_s: float = 0.2) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; the kernel releases it
    if this process dies. Waits at most ``timeout_s``, saying so every :data:`LOG_EVERY_S`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = last_log = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now - started >= timeout_s:
                    raise OpBuildTimeout(
                        f"waited {timeout_s:.0f} s for {path}: another process is still building {what}. "
                        "If no other worldloop or DeepSpeed run is alive (check ps), delete "
                        f"{path} and {path.with_name(TORCH_LOCK)} and run again; "
                        "WORLDLOOP_OP_BUILD_TIMEOUT_S sets the wait"
                    ) from None
                if now - last_log >= LOG_EVERY_S:
                    log.warning(
                        "waiting %.0f s for another process building %s (%s)", now - started, what, path
                    )
                    last_log = now
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def guarded_load(builder: Any, *, timeout_s: float | None = None) -> Any:
    """``builder.load()`` (a DeepSpeed op builder) under the guard described in the module docstring."""
    folder = build_directory(builder.name)
    timeout = timeout_from_env() if timeout_s is None else timeout_s
    with exclusive(folder / GUARD_FILE, timeout_s=timeout, what=f"DeepSpeed's {builder.name} op"):
        stale = folder / TORCH_LOCK
        if stale.exists():  # every worldloop build holds the guard: this one's builder died mid-build
            log.warning("removing %s, left by a build of %s that was killed; rebuilding", stale, builder.name)
            stale.unlink(missing_ok=True)
        return builder.load(verbose=False)


def load_shm_op(*, timeout_s: float | None = None) -> Any | None:
    """Build (once) and load DeepSpeed's shared-memory communication op, as ``deepspeed.init_distributed``
    would, but without a silent hang; None where DeepSpeed would not use it. Later loads in this process
    come from DeepSpeed's own cache of loaded ops."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder(SHM_OP)
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    return guarded_load(builder, timeout_s=timeout_s)
