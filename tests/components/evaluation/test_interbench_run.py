"""``worldloop eval interbench`` end to end on random weights: the model streams every case, the run
writes scores.json, radar.png, report.html and videos, logs to MLflow, and an untrained model scores low."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest

from worldloop.components.evaluation.suite import build_synthworld_suite
from worldloop.video import decode_video


class _Page(HTMLParser):
    """Reads the report the way a browser would: the radar image, the tables' cells, the links."""

    def __init__(self) -> None:
        super().__init__()
        self.radar = ""
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("id") == "radar":
            self.radar = a.get("src") or ""
        elif tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


DIMS = ("trigger", "alignment", "fluency", "scope", "end_state", "physics")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"WORLDLOOP_HOME": str(home)}
    code = "from worldloop.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("interbench")
    suite = build_synthworld_suite(root / "suite", cases=10, size=64, frames=33, seed=0)
    out = root / "report"
    done = _cli(
        root / "home", "eval", "interbench", "--model", "preset:tiny", "--suite", str(suite.root),
        "--cases", "2", "--out", str(out),
    )  # fmt: skip
    return root, out, done


def test_report_files_and_low_scores_for_random_weights(
    report: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    root, out, done = report
    assert done.returncode == 0, done.stderr
    assert "held-out accuracy" in done.stdout and "report:" in done.stdout
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["interbench"]) == set(DIMS)
    assert scores["judge"]["held_out_accuracy"] >= 0.95
    assert [c["kind"] for c in scores["cases"]] == ["snow", "rain"]  # category-balanced selection
    # An untrained model performs no interaction.
    assert scores["interbench"]["trigger"] == 0.0
    assert scores["interbench"]["alignment"] < 0.3 and scores["interbench"]["end_state"] < 0.3
    assert {"psnr", "ssim", "temporal_consistency", "dynamic_degree", "image_quality"} <= set(
        scores["general"]
    )
    for case in scores["cases"]:
        frames, _ = decode_video(out / case["video"])
        assert frames.shape == (33, 64, 64, 3)
    assert (out / "radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    parsed = _parse(page)
    assert base64.b64decode(parsed.radar.removeprefix("data:image/png;base64,"))[:4] == b"\x89PNG"
    header, overall = parsed.tables["dimensions"][0], parsed.tables["dimensions"][1]
    assert header[1:] == ["Trigger rate", "Prompt–video alignment", "Interaction fluency", "Scope accuracy",
                          "End-state consistency", "Physical correctness"]  # fmt: skip
    assert overall[0] == "all cases" and overall[1] == "0.000"
    assert len(parsed.tables["cases"]) == 3 and "videos/0000-snow.mp4" in parsed.links

    mlflow.set_tracking_uri(f"sqlite:///{root / 'home' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["worldloop-evaluation"], output_format="list")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["interbench.trigger"] == 0.0 and metrics["judge.held_out_accuracy"] >= 0.95


def test_compare_prints_both_columns(report: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    root, out, _ = report
    other = json.loads((out / "scores.json").read_text())
    other["model"] = "other"
    other["interbench"]["alignment"] = 0.9
    (root / "other.json").write_text(json.dumps(other))
    done = _cli(root / "home", "eval", "compare", str(out), str(root / "other.json"))
    assert done.returncode == 0, done.stderr
    assert "preset:tiny" in done.stdout and "other" in done.stdout and "interbench.alignment" in done.stdout


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    for args in (
        ["eval", "interbench", "--model", "preset:tiny", "--judge", "vlm", "--out", str(tmp_path / "o")],
        ["eval", "interbench", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        ["eval", "interbench", "--model", "preset:huge", "--out", str(tmp_path / "o")],
        ["eval", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")],
    ):
        done = _cli(tmp_path / "home", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("worldloop: error:") and "Traceback" not in done.stderr, done.stderr
