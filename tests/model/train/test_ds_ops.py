"""No silent hang after a crash: a run killed while DeepSpeed JIT-builds its shared-memory op leaves
torch's lock file behind, and the next run still completes; a live builder makes others wait with a
timeout and an error that names the files."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worldloop.model.train.ds_ops import GUARD_FILE, TORCH_LOCK, OpBuildTimeout, build_directory, load_shm_op

BUILD = (
    "from worldloop.model.train.ds_ops import load_shm_op; assert load_shm_op() is not None; print('built')"
)


def _folder(extensions: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    return build_directory("deepspeed_shm_comm")


def test_a_build_killed_midway_does_not_hang_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path / "ext", monkeypatch)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    first = subprocess.Popen([sys.executable, "-c", BUILD], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (folder / TORCH_LOCK).exists():  # the build has started
        assert first.poll() is None, "the first run ended before its build started"
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # kill -9, compiler children included
    first.wait()
    assert (folder / TORCH_LOCK).exists()  # the state that used to hang every later run
    second = subprocess.run(
        [sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=480
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "built" in second.stdout and not (folder / TORCH_LOCK).exists()
    assert "left by a build of deepspeed_shm_comm that was killed" in second.stderr


def test_waiting_for_a_live_builder_times_out_naming_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path / "ext", monkeypatch)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / GUARD_FILE, "w") as held:  # noqa: PTH123 - a live builder holds the guard
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(OpBuildTimeout) as err:
            load_shm_op(timeout_s=0.5)
        assert time.monotonic() - started < 10
    message = str(err.value)
    assert str(folder / GUARD_FILE) in message and str(folder / TORCH_LOCK) in message
    assert "WORLDLOOP_OP_BUILD_TIMEOUT_S" in message
