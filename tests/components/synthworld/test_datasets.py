"""Labelled and raw folders as curation and training will read them."""

import json

import av
import numpy as np
import pytest

from worldloop.components.synthworld import (
    ClipRecord,
    Defect,
    RawTruth,
    SynthConfig,
    load_masks,
    write_dataset,
    write_raw,
)
from worldloop.video import decode_video

CFG = SynthConfig(size=64, frames=17)


def test_labelled_folder_round_trips_and_resumes(tmp_path) -> None:
    records = write_dataset(tmp_path, CFG, clips=3, seed=2)
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert [e["name"] for e in index] == [r.name for r in records]
    for record in records:
        stored = ClipRecord.model_validate_json((tmp_path / f"{record.name}.json").read_text())
        assert stored == record and len(stored.c2w) == len(stored.intrinsics) == len(stored.actions) == 17
        frames, fps = decode_video(tmp_path / record.video)
        assert frames.shape == (17, 64, 64, 3) and fps == 16
        if record.events:
            masks = load_masks(tmp_path / record.events[0].mask_file)
            assert masks.shape == (17, 64, 64)
            assert masks.reshape(17, -1).sum(1).tolist() == record.events[0].mask_pixels
    stamp = (tmp_path / "clip_00001.mp4").stat().st_mtime_ns
    (tmp_path / "clip_00002.json").unlink()  # as if killed before the last clip finished
    again = write_dataset(tmp_path, CFG, clips=3, seed=2)
    assert again == records
    assert (tmp_path / "clip_00001.mp4").stat().st_mtime_ns == stamp  # finished clips are skipped


def test_twins_are_the_same_shot_with_nothing_triggered(tmp_path) -> None:
    cfg = CFG.model_copy(update={"twins": True, "multi_turn_probability": 0.0})
    records = write_dataset(tmp_path, cfg, clips=2, seed=2)
    assert [r.name for r in records] == ["clip_00000", "clip_00000-twin", "clip_00001", "clip_00001-twin"]
    for clip, twin in zip(records[::2], records[1::2], strict=True):
        assert clip.events and not twin.events
        assert (twin.c2w, twin.actions, twin.captions, twin.scene) == (
            clip.c2w,
            clip.actions,
            clip.captions,
            clip.scene,
        )
        a = decode_video(tmp_path / clip.video)[0].astype(np.float32)
        b = decode_video(tmp_path / twin.video)[0].astype(np.float32)
        onset = clip.events[0].onset_frame
        masks = load_masks(tmp_path / clip.events[0].mask_file)
        assert np.abs(a[:onset] - b[:onset]).mean() < 1.0  # the same frames (up to the codec) before it
        late = slice(clip.events[0].full_frame, None)
        assert np.abs(a[late] - b[late])[masks[late]].mean() > 10 * np.abs(a[:onset] - b[:onset]).mean() + 5
    # training reads both: the twin's clip has no instruction
    data = json.loads((tmp_path / "dataset.json").read_text())
    assert [c["key"] for s in data["shards"] for c in s["clips"]] == [r.name for r in records]
    (tmp_path / "clip_00001.json").unlink()  # killed after the twin, before the clip's JSON
    assert write_dataset(tmp_path, cfg, clips=2, seed=2) == records


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    truths = write_raw(out, CFG, clips=16, seed=5, bad_fraction=0.5)
    return out, {t.defect: t for t in truths}


def test_raw_mode_mixes_in_every_defect(raw) -> None:
    out, by_defect = raw
    assert set(by_defect) == set(Defect)
    truth_lines = (out / "_truth" / "index.jsonl").read_text().splitlines()
    assert len(truth_lines) == 16 and RawTruth.model_validate_json(truth_lines[0])


def test_raw_defects_are_what_they_claim(raw) -> None:
    out, d = raw
    name = lambda defect: out / f"{d[defect].name}.mp4"  # noqa: E731
    assert name(Defect.zero_byte).stat().st_size == 0
    with pytest.raises(av.error.FFmpegError):
        decode_video(name(Defect.truncated))
    black, _ = decode_video(name(Defect.black))
    assert black.max() <= 20
    static, _ = decode_video(name(Defect.static))
    assert np.abs(np.diff(static.astype(int), axis=0)).mean() < 1.0
    short, _ = decode_video(name(Defect.too_short))
    assert len(short) < 8
    cut, _ = decode_video(name(Defect.scene_cut))
    jumps = np.abs(np.diff(cut.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert int(np.argmax(jumps)) + 1 == d[Defect.scene_cut].cut_frame
    assert not (out / f"{d[Defect.missing_caption].name}.txt").exists()
    with pytest.raises(UnicodeDecodeError):
        (out / f"{d[Defect.non_utf8_caption].name}.txt").read_bytes().decode("utf-8")
    good, _ = decode_video(name(Defect.none))
    assert len(good) == 17 and (out / f"{d[Defect.none].name}.txt").read_text().strip()
    assert (out / "_truth" / f"{d[Defect.none].name}.json").exists()
