"""``worldloop models`` through the console entry point: tables, a refusal is one line and exit 1, bad
input one line and exit 2, approve → promote → rollback moves ``champion``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worldloop.cli import models as models_cli
from worldloop.cli.main import run
from worldloop.components.registry import register_version, show
from worldloop.settings import Settings, get_settings

DIMS = ("trigger", "alignment", "fluency", "scope", "end_state", "physics")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("WORLDLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WORLDLOOP_APPROVERS", "alice@example.com, demo@local")
    monkeypatch.setenv("WORLDLOOP_GATE_BASELINE_METRICS", "")  # the quality rule: test_registry.py
    monkeypatch.delenv("WORLDLOOP_IDENTITY", raising=False)
    monkeypatch.setattr(models_cli.console, "width", 240)  # whole tables, not a terminal's 80 columns
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def _register(root: Path, physics: float) -> int:
    folder = root / "step-00000001"
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "state.json").write_text(json.dumps({"config": {"model_preset": "tiny"}}))
    scores = {"interbench": {d: physics if d == "physics" else 0.5 for d in DIMS}}
    return register_version(folder, scores=scores, settings=get_settings()).version


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("worldloop: error: "), err
    return lines[0]


def test_models_cli(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["models", "list"]) == 0
    assert "no versions" in capsys.readouterr().out
    assert _register(tmp_path / "a", physics=0.5) == 1

    assert run(["models", "promote", "1", "--as", "alice@example.com"]) == 1  # not approved
    line = _one_error_line(capsys.readouterr().err)
    assert "promotion of worldloop v1 refused: v1 is not approved" in line
    assert run(["models", "approve", "1", "--reason", "ok", "--as", "mallory@example.com"]) == 1
    assert "mallory@example.com is not an authorised approver" in _one_error_line(capsys.readouterr().err)
    assert run(["models", "approve", "7", "--reason", "ok"]) == 2  # bad input, not a refusal
    assert "no version 7" in _one_error_line(capsys.readouterr().err)

    assert run(["models", "approve", "candidate", "--reason", "report reviewed", "--as", "demo@local"]) == 0
    assert run(["models", "promote", "1", "--as", "demo@local"]) == 0
    assert "champion: none → v1" in capsys.readouterr().out

    assert _register(tmp_path / "b", physics=0.3) == 2
    assert run(["models", "approve", "2", "--reason", "r", "--as", "alice@example.com"]) == 0
    assert run(["models", "promote", "2", "--as", "alice@example.com"]) == 1
    captured = capsys.readouterr()
    assert "physics 0.300 is 0.200 below champion v1's 0.500" in _one_error_line(captured.err)
    assert "Promotion gate" in captured.out and "FAIL" in captured.out  # the gate table

    assert run(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "candidate" in out and "alice@example.com" in out
    assert run(["models", "show", "2"]) == 0
    out = capsys.readouterr().out
    assert "audit trail" in out and "refused" in out and "lineage.checkpoint" in out

    assert run(["models", "rollback", "--as", "demo@local"]) == 1
    assert "no previous champion" in _one_error_line(capsys.readouterr().err)
    settings = Settings(home=home, approvers=["alice@example.com"])
    assert show("champion", settings=settings).version == 1
