"""The console script, run as users run it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worldloop.components.synthworld import ClipRecord
from worldloop.video import decode_video

EXE = str(Path(sys.executable).with_name("worldloop"))


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_help_lists_the_eight_subcommands_and_version() -> None:
    out = run("--help")
    assert out.returncode == 0
    for name in ("synth", "curate", "train", "eval", "pipeline", "models", "serve", "infra"):
        assert f" {name} " in out.stdout, name
    assert run("--version").stdout.startswith("worldloop ")
    for sub in ("curate", "train", "eval", "pipeline", "models", "serve", "infra"):
        assert run(sub, "--help").returncode == 0


def test_bad_input_is_one_line_without_traceback(tmp_path) -> None:
    for args in (
        ["--bogus"],
        ["synth", "--out", str(tmp_path), "--size", "63"],
        ["synth", "--clips", "x"],
        ["synth", "--out", str(tmp_path), "--events", "teleport"],
    ):
        out = run(*args)
        assert out.returncode == 2, args
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith("worldloop: error:")


def test_synth_acceptance(tmp_path) -> None:
    out = run(
        "synth", "--out", str(tmp_path), "--clips", "4", "--frames", "33", "--size", "64", "--seed", "1"
    )
    assert out.returncode == 0, out.stderr
    videos = sorted(tmp_path.glob("*.mp4"))
    assert len(videos) == 4 and len((tmp_path / "index.jsonl").read_text().splitlines()) == 4
    speed = 0.06  # CameraMotion default move_per_frame
    w_steps = yaw_steps = 0
    for video in videos:
        frames, _ = decode_video(video)
        record = ClipRecord.model_validate_json(video.with_suffix(".json").read_text())
        assert frames.shape[0] == 33 and len(record.c2w) == 33
        c2w = np.array(record.c2w)
        for i, action in enumerate(record.actions[1:], start=1):
            delta = c2w[i - 1, :3, :3].T @ (c2w[i, :3, 3] - c2w[i - 1, :3, 3])  # in the previous camera frame
            if action.keys == ["w"] and action.mouse == (0.0, 0.0) and abs(c2w[i - 1, 1, 2]) < 1e-9:
                np.testing.assert_allclose(delta, [0, 0, speed], atol=1e-6)  # W moves along +z
                w_steps += 1
            if action.mouse[0] != 0:
                before = math.atan2(c2w[i - 1, 0, 2], c2w[i - 1, 2, 2])
                after = math.atan2(c2w[i, 0, 2], c2w[i, 2, 2])
                turn = math.degrees((after - before + math.pi) % (2 * math.pi) - math.pi)
                assert turn == np.float64(action.mouse[0]).round(9) or abs(turn - action.mouse[0]) < 1e-6
                yaw_steps += 1
        for event in record.events:
            pixels = event.mask_pixels
            assert all(p == 0 for p in pixels[: event.onset_frame])
            assert all(p > 0 for p in pixels[event.onset_frame :])
    assert w_steps > 0 and yaw_steps > 0
    first = json.loads((tmp_path / "index.jsonl").read_text().splitlines()[0])
    assert first["meta"] == "clip_00000.json"


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_the_gate_refuses_an_untrained_model(tmp_path) -> None:
    # A smaller variant of `make demo`: fewer clips, one step per stage, two InterBench cases. One step
    # teaches the model nothing, so the gate must refuse it: it does not beat the frozen first frame.
    env = {**os.environ, "WORLDLOOP_HOME": str(tmp_path / "home"), "COLUMNS": "200"}  # rich: no wrapping
    out = subprocess.run(
        [EXE, "demo", "--clips", "2", "--max-steps", "1", "--eval-cases", "2"],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "registered version 1" in out.stdout
    assert "v1 was NOT promoted" in out.stdout and "does not beat the" in out.stdout
    assert "InterBench of v1" in out.stdout and "Quality ladder of v1" in out.stdout
    assert "worldloop serve run --model models:/worldloop/1" in out.stdout
    listed = subprocess.run([EXE, "models", "list"], capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0 and "candidate" in listed.stdout and "champion" not in listed.stdout
    assert (tmp_path / "home" / "mlflow.db").exists()
