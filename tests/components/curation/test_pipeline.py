"""Curation end to end on SynthWorld raw pairs: every injected defect quarantined with its reason, every
good clip kept, cuts split at the injected frame, resume after kill -9 gives the same dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worldloop.components.curation.config import CurationConfig
from worldloop.components.curation.dataset import read_manifest, read_quarantine
from worldloop.components.curation.pipeline import run_curation
from worldloop.components.synthworld import SynthConfig, write_raw
from worldloop.data import ClipStore, read_index

EXPECTED_REASON = {
    "truncated": "unreadable",
    "zero_byte": "unreadable",
    "black": "too_dark",
    "static": "static",
    "too_short": "too_short",
}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    # 18 pairs, half bad: every defect kind at least twice.
    write_raw(out, SynthConfig(size=64, frames=33), clips=18, seed=3, bad_fraction=0.9)
    return out


@pytest.fixture(scope="module")
def curated(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("curated")
    run_curation(str(raw), str(out), CurationConfig(shard_size=4), executor="local")
    return out


def _truth(raw: Path) -> dict[str, dict]:
    return {
        row["name"]: row for row in map(json.loads, (raw / "_truth" / "index.jsonl").read_text().splitlines())
    }


def test_every_bad_clip_is_quarantined_with_its_reason_and_every_good_one_kept(
    raw: Path, curated: Path
) -> None:
    truth = _truth(raw)
    quarantine = read_quarantine(str(curated))
    manifest = read_manifest(str(curated))
    dropped = {q.source_name: q for q in quarantine}
    kept = {c.source_name for c in manifest}
    for name, row in truth.items():
        defect = row["defect"]
        if defect in EXPECTED_REASON:
            assert name in dropped and name not in kept, (name, defect)
            assert dropped[name].reason.value == EXPECTED_REASON[defect], (name, dropped[name])
            assert dropped[name].detail
        else:  # good, scene_cut, missing / non-UTF-8 caption: kept
            assert name in kept and name not in dropped, (name, defect)
    summary = json.loads((curated / "summary.json").read_text())
    assert summary["kept_clips"] == len(manifest)
    assert sum(summary["dropped"].values()) == len(quarantine)


def test_cuts_split_within_one_frame_and_captions_survive_bad_text(raw: Path, curated: Path) -> None:
    truth = _truth(raw)
    manifest = read_manifest(str(curated))
    cuts = [n for n, r in truth.items() if r["defect"] == "scene_cut"]
    assert cuts
    for name in cuts:
        shots = sorted((c.start_frame, c.frames) for c in manifest if c.source_name == name)
        assert len(shots) == 2, shots
        assert abs(shots[1][0] - truth[name]["cut_frame"]) <= 1
        assert shots[0][0] + shots[0][1] == shots[1][0]
    for clip in manifest:
        assert clip.captions.long and clip.captions.short
        defect = truth[clip.source_name]["defect"]
        if defect == "missing_caption":
            assert clip.source_caption is None and clip.caption_note == "no caption file"
        if defect == "non_utf8_caption":
            assert clip.caption_note and "not UTF-8" in clip.caption_note
            assert "café" in (clip.source_caption or "")


def test_shards_hold_decodable_clips_with_camera_tracks(curated: Path) -> None:
    """The curated dataset is in the training-data format: its index lists every kept clip, in
    manifest order, and each reads back (sha256-checked) with its camera track."""
    manifest = read_manifest(str(curated))
    store = ClipStore(str(curated))
    refs = store.clips()
    assert [store.entry(*r).key for r in refs] == [c.clip_id for c in manifest]
    assert read_index(str(curated)).kind == "curated"
    for ref, row in zip(refs, manifest, strict=True):
        clip = store.load(*ref)
        assert clip.frames.shape == (row.frames, row.height, row.width, 3)
        assert clip.meta.camera == row.camera and clip.meta.captions == row.captions
        assert clip.meta.actions is None and clip.meta.source == row.source
        assert clip.c2w.shape == (row.frames, 4, 4)
        np.testing.assert_allclose(clip.c2w[0], np.eye(4))


def test_rerun_skips_finished_shards_and_changes_nothing(raw: Path, curated: Path) -> None:
    before = {p.name: p.read_bytes() for p in (curated / "shards").iterdir()}
    manifest = (curated / "manifest.jsonl").read_bytes()
    summary = run_curation(str(raw), str(curated), CurationConfig(shard_size=4), executor="local")
    assert summary.shards_skipped == summary.shards
    assert {p.name: p.read_bytes() for p in (curated / "shards").iterdir()} == before
    assert (curated / "manifest.jsonl").read_bytes() == manifest
    with pytest.raises(ValueError, match="another config"):
        run_curation(str(raw), str(curated), CurationConfig(shard_size=4, crf=30), executor="local")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from worldloop.cli.main import main; main()", *args]


def test_kill_then_rerun_gives_the_same_dataset(raw: Path, curated: Path, tmp_path: Path) -> None:
    config = tmp_path / "curation.yaml"
    config.write_text("shard_size: 4\n")
    out = tmp_path / "killed"
    args = _cli(
        "curate", "--input", str(raw), "--out", str(out), "--executor", "local", "--config", str(config)
    )
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "shards" / "shard-00000.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "manifest.jsonl").exists()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("manifest.jsonl", "quarantine.jsonl", "summary.json"):
        assert (out / name).read_bytes() == (curated / name).read_bytes(), name
    # Byte-identical shards: the clips are re-encoded deterministically (worldloop.video.encode_mp4).
    shards = sorted(p.name for p in (curated / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards
    for name in shards:
        assert (out / "shards" / name).read_bytes() == (curated / "shards" / name).read_bytes(), name


@pytest.mark.slow
def test_ray_data_with_two_workers_matches_the_local_run(raw: Path, curated: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    summary = run_curation(str(raw), str(out), CurationConfig(shard_size=4), executor="ray", workers=2)
    assert summary.shards == 5
    assert (out / "manifest.jsonl").read_bytes() == (curated / "manifest.jsonl").read_bytes()
    assert (out / "quarantine.jsonl").read_bytes() == (curated / "quarantine.jsonl").read_bytes()
    for shard in (curated / "shards").iterdir():  # same clip bytes from other processes too
        assert (out / "shards" / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_cli_prints_the_summary_and_rejects_bad_input(raw: Path, tmp_path: Path) -> None:
    missing = subprocess.run(
        _cli("curate", "--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("worldloop: error:")
    assert "Traceback" not in missing.stderr
