"""Curation steps one by one: pair discovery, caption decoding, filters, shot ranges, camera phrase,
the camera-error report, and a whole run reading from and writing to a live local S3 endpoint."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from worldloop import storage
from worldloop.components.curation.config import CurationConfig, QualityConfig
from worldloop.components.curation.dataset import read_manifest, read_quarantine
from worldloop.components.curation.pipeline import run_curation
from worldloop.components.curation.process import describe_camera
from worldloop.components.curation.quality import Reason, check_quality
from worldloop.components.curation.report import camera_error_report
from worldloop.components.curation.shots import chunk_ranges, shot_ranges
from worldloop.components.curation.sources import decode_caption, discover, read_metadata_camera
from worldloop.components.synthworld import SynthConfig, write_dataset, write_raw
from worldloop.model.camera.actions import rotation_yaw_pitch
from worldloop.settings import Settings

S3_BUCKET = "worldloop-test"  # created by the s3_endpoint fixture (tests/conftest.py)


def test_discover_groups_pairs_and_skips_private_folders(tmp_path: Path) -> None:
    for name in ("b.mp4", "b.txt", "a.MP4", "a.json", "sub/c.webm", "orphan.txt", "_truth/x.mp4", ".h/y.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    pairs = discover(str(tmp_path))
    assert [p.name for p in pairs] == ["a", "b", "sub/c"]
    a, b, c = pairs
    assert a.caption_uri is None and a.metadata_uri and a.metadata_uri.endswith("a.json")
    assert b.caption_uri and b.caption_uri.endswith("b.txt") and b.metadata_uri is None
    assert c.video_uri.endswith("sub/c.webm")
    with pytest.raises(FileNotFoundError, match="no files"):
        discover(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("data", "text", "note"),
    [
        (b"a hall, the player opens the door\n", "a hall, the player opens the door", None),
        ("\ufeffcafé".encode(), "café", None),
        ("café crème".encode("latin-1"), "café crème", "caption was not UTF-8; decoded as Windows-1252"),
        (b"  \n\t ", None, None),
        (b"", None, None),
    ],
)
def test_captions_decode_without_errors(data: bytes, text: str | None, note: str | None) -> None:
    assert decode_caption(data) == (text, note)


def test_metadata_camera_is_used_only_when_complete() -> None:
    K, c2w = np.eye(3)[None].repeat(3, 0), np.eye(4)[None].repeat(3, 0)
    good = json.dumps({"intrinsics": K.tolist(), "c2w": c2w.tolist()}).encode()
    assert read_metadata_camera(good, 3) is not None
    assert read_metadata_camera(good, 4) is None  # wrong length
    assert read_metadata_camera(b"{not json", 3) is None
    assert read_metadata_camera(json.dumps({"c2w": c2w.tolist()}).encode(), 3) is None


def test_quality_reasons_and_thresholds() -> None:
    cfg = QualityConfig()
    ok = {"luma": 0.3, "sharpness": 50.0, "motion_p90": 2.0, "change_p90": 0.1}
    assert check_quality(ok, 33, cfg) is None
    assert check_quality(ok, 5, cfg)[0] is Reason.too_short  # type: ignore[index]
    assert check_quality({**ok, "luma": 0.0}, 33, cfg)[0] is Reason.too_dark  # type: ignore[index]
    assert check_quality({**ok, "sharpness": 0.5}, 33, cfg)[0] is Reason.blurry  # type: ignore[index]
    still = {**ok, "motion_p90": 0.0, "change_p90": 0.0}
    assert check_quality(still, 33, cfg)[0] is Reason.static  # type: ignore[index]
    # A still camera with something changing in view is not static.
    assert check_quality({**still, "change_p90": 0.1}, 33, cfg) is None
    with pytest.raises(ValueError, match="max_frames"):
        QualityConfig(min_frames=20, max_frames=10)


def test_shot_and_chunk_ranges_tile_the_clip() -> None:
    assert shot_ranges(10, []) == [(0, 10)]
    assert shot_ranges(10, [4, 7]) == [(0, 4), (4, 7), (7, 10)]
    assert chunk_ranges(3, 20, 8) == [(3, 11), (11, 19), (19, 20)]


def test_camera_phrase_follows_the_motion() -> None:
    c2w = np.eye(4)[None].repeat(10, 0)
    assert describe_camera(c2w) == "the camera stays still"
    walk = c2w.copy()
    walk[:, 2, 3] = np.linspace(0, 1, 10)
    walk[-1, :3, :3] = rotation_yaw_pitch(np.radians(-20), 0.0)
    assert describe_camera(walk) == "the camera moves forward and turns left"


def test_labelled_synthworld_uses_metadata_cameras(tmp_path: Path) -> None:
    src = tmp_path / "labelled"
    write_dataset(src, SynthConfig(size=64, frames=17), clips=2, seed=4)
    out = tmp_path / "out"
    summary = run_curation(str(src), str(out), CurationConfig(), executor="local")
    assert summary.camera == {"metadata": summary.kept_clips} and summary.kept_clips >= 2
    clip = read_manifest(str(out))[0]
    truth = json.loads((src / f"{clip.source_name}.json").read_text())
    np.testing.assert_allclose(clip.camera.c2w, truth["c2w"][: clip.frames], atol=1e-9)


def test_estimated_camera_error_is_reported_against_truth(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw(raw, SynthConfig(size=128, frames=33), clips=3, seed=8, bad_fraction=0.0)
    out = tmp_path / "out"
    run_curation(str(raw), str(out), CurationConfig(), executor="local")
    report = camera_error_report(read_manifest(str(out)), raw / "_truth")
    assert report.clips >= 3 and report.frames >= 3 * 32
    assert report.yaw_median_deg < 2.0, report.line()  # the goal, at 128 px


def test_curation_reads_and_writes_s3(tmp_path: Path, s3_settings: Settings) -> None:
    raw = tmp_path / "raw"
    write_raw(raw, SynthConfig(size=64, frames=17), clips=4, seed=2, bad_fraction=0.5)
    prefix = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    for path in sorted(raw.rglob("*")):
        if path.is_file():
            key = f"{prefix}/raw/{path.relative_to(raw).as_posix()}"
            storage.upload_file(path, key, settings=s3_settings)
    local = tmp_path / "local"
    expected = run_curation(str(raw), str(local), CurationConfig(shard_size=2), executor="local")
    summary = run_curation(
        f"{prefix}/raw", f"{prefix}/out", CurationConfig(shard_size=2), executor="local", settings=s3_settings
    )
    assert summary.as_json() == expected.as_json()
    remote = read_manifest(f"{prefix}/out", settings=s3_settings)
    assert [c.clip_id for c in remote] == [c.clip_id for c in read_manifest(str(local))]
    assert all(c.source.startswith(prefix) for c in remote)
    assert len(read_quarantine(f"{prefix}/out", settings=s3_settings)) == sum(expected.dropped.values())
