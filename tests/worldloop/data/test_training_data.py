"""The training-data format: shards + index written and read back (locally and over S3), integrity
checks, flat memory under a cache budget, and the deterministic, resumable mixture order."""

from __future__ import annotations

import tracemalloc
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from clip_datasets import make_dataset

from worldloop import storage
from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.components.synthworld.schema import ClipRecord
from worldloop.components.synthworld.writer import load_masks
from worldloop.data import (
    ClipStore,
    DataIntegrityError,
    DataSource,
    Mixture,
    parse_source,
    read_index,
    resolve_sources,
    write_mixture,
)
from worldloop.settings import Settings
from worldloop.video import decode_video

S3_BUCKET = "worldloop-test"


@pytest.fixture(scope="module")
def synthworld(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, SynthConfig(size=64, frames=9), clips=3, seed=11)
    return out


def test_synthworld_writes_the_training_format_with_everything_it_knows(synthworld: Path) -> None:
    index = read_index(str(synthworld))
    assert index.kind == "synthworld" and index.clips == 3
    store = ClipStore(str(synthworld))
    for shard, clip in store.clips():
        loaded = store.load(shard, clip)
        record = ClipRecord.model_validate_json((synthworld / f"{loaded.meta.key}.json").read_text())
        frames, _ = decode_video(synthworld / record.video)
        np.testing.assert_array_equal(loaded.frames, frames)
        np.testing.assert_allclose(loaded.c2w, np.asarray(record.c2w))
        assert loaded.meta.camera.source == "truth" and loaded.meta.actions == record.actions
        assert loaded.meta.captions == record.captions
        masks = store.masks(shard, clip)
        if record.events:
            assert loaded.meta.interaction == record.events[0].caption
            np.testing.assert_array_equal(masks, load_masks(synthworld / record.events[0].mask_file))
        else:
            assert masks is None and loaded.meta.interaction is None


def test_shards_are_plain_tars_with_clip_members_adjacent(tmp_path: Path) -> None:
    import tarfile

    make_dataset(str(tmp_path), clips=3, per_shard=2)
    with tarfile.open(tmp_path / "shards" / "shard-00000.tar") as tar:
        assert tar.getnames() == ["c0000.mp4", "c0000.json", "c0001.mp4", "c0001.json"]
    again = tmp_path / "again"
    make_dataset(str(again), clips=3, per_shard=2)
    assert (again / "dataset.json").read_bytes() == (tmp_path / "dataset.json").read_bytes()


def test_a_changed_shard_is_refused_with_the_member_named(tmp_path: Path) -> None:
    make_dataset(str(tmp_path), clips=2, per_shard=2)
    store = ClipStore(str(tmp_path))
    entry = store.entry(0, 1)
    shard = tmp_path / "shards" / "shard-00000.tar"
    data = bytearray(shard.read_bytes())
    data[entry.video.offset + 100] ^= 0xFF
    shard.write_bytes(bytes(data))
    store.load(0, 0)  # the other clip is intact
    with pytest.raises(DataIntegrityError, match=r"shard-00000.tar:c0001.mp4"):
        store.load(0, 1)


def test_a_folder_without_an_index_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a worldloop dataset"):
        ClipStore(str(tmp_path))


def _read_everything(root: str, *, cache_bytes: int, epochs: int) -> tuple[ClipStore, int]:
    """Read ``epochs`` epochs of windows' clips in mixture order; (store, tracemalloc peak bytes)."""
    mixture = Mixture([DataSource(uri=root)], cache_bytes=cache_bytes)
    order = mixture.order(frames=5, seed=3)
    tracemalloc.start()
    try:
        for i in range(epochs * mixture.clips):
            mixture.load(order.locate(i))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return mixture.stores[0], peak


def test_memory_stays_flat_as_the_dataset_outgrows_the_cache(tmp_path: Path) -> None:
    clip_bytes = 9 * 48 * 48 * 3 + 9 * (9 + 16) * 8
    budget = 3 * clip_bytes
    small, large = str(tmp_path / "small"), str(tmp_path / "large")
    make_dataset(small, clips=8, per_shard=4)
    make_dataset(large, clips=32, per_shard=4)
    store_small, peak_small = _read_everything(small, cache_bytes=budget, epochs=2)
    store_large, peak_large = _read_everything(large, cache_bytes=budget, epochs=2)
    for store in (store_small, store_large):
        assert 0 < store.peak_cached_bytes <= budget and store.cached_bytes <= budget
    total_large = 32 * clip_bytes
    assert total_large > 10 * budget  # the data is far larger than the cache
    assert store_large.fetches == 2 * 32  # each epoch reads every clip again from its shard
    # what the reader holds does not grow with the data: 4x the clips, about the same peak
    assert peak_large < 1.5 * peak_small and peak_large < budget + 6 * clip_bytes


def test_one_source_reads_every_clip_once_per_epoch_shard_by_shard(tmp_path: Path) -> None:
    make_dataset(str(tmp_path), clips=10, per_shard=4)
    order = Mixture.open(str(tmp_path)).order(frames=9, seed=0)
    for epoch in range(2):
        refs = [order.locate(epoch * 10 + i) for i in range(10)]
        assert sorted((r.shard, r.clip) for r in refs) == sorted(ClipStore(str(tmp_path)).clips())
        shards = [r.shard for r in refs]
        assert len([k for k in range(1, 10) if shards[k] != shards[k - 1]]) == 2  # 3 shards, visited once


def test_order_is_a_function_of_seed_and_index(tmp_path: Path) -> None:
    """Ranks read disjoint samples, and a resumed run reads what the uninterrupted one would: the
    clip of sample i does not depend on which samples were asked for before."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_dataset(a, clips=6, per_shard=2, prefix="a")
    make_dataset(b, clips=5, per_shard=2, prefix="b")
    sources = [DataSource(uri=a, weight=0.7), DataSource(uri=b, weight=0.3)]
    straight = Mixture(sources).order(frames=9, seed=5)
    expected = [straight.locate(i) for i in range(3000)]
    resumed = Mixture(sources).order(frames=9, seed=5)
    assert [resumed.locate(i) for i in range(2999, 1499, -1)] == expected[1500:][::-1]
    world, batch = 2, 3  # the loop's split: rank r of W takes samples n·W·B + r·B … + B
    ranks = [
        [n * world * batch + r * batch + k for n in range(50) for k in range(batch)] for r in range(world)
    ]
    assert not set(ranks[0]) & set(ranks[1])
    other_seed = Mixture(sources).order(frames=9, seed=6)
    assert [other_seed.locate(i) for i in range(50)] != expected[:50]


def test_mixture_weights_and_per_source_epochs(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_dataset(a, clips=4, per_shard=2, prefix="a")
    make_dataset(b, clips=3, per_shard=3, prefix="b")
    order = Mixture([DataSource(uri=a, weight=7), DataSource(uri=b, weight=3)]).order(frames=9, seed=1)
    refs = [order.locate(i) for i in range(4000)]
    share = Counter(r.source for r in refs)
    assert abs(share[0] / 4000 - 0.7) < 0.03
    from_a = [(r.shard, r.clip) for r in refs if r.source == 0]
    for epoch in range(len(from_a) // 4):  # source a's own reads go epoch by epoch
        assert len(set(from_a[epoch * 4 : epoch * 4 + 4])) == 4


def test_short_clips_leave_the_order_and_a_curriculum_too_long_is_refused(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_dataset(a, clips=2, per_shard=2, frames=5, prefix="a")
    make_dataset(b, clips=2, per_shard=2, frames=9, prefix="b")
    mixture = Mixture([DataSource(uri=a), DataSource(uri=b)])
    assert {mixture.order(frames=9, seed=0).locate(i).source for i in range(50)} == {1}
    with pytest.raises(ValueError, match="no clip has 17 frames"):
        mixture.order(frames=17, seed=0)


def test_sources_from_the_command_line_and_mixture_files(tmp_path: Path) -> None:
    assert parse_source("/data/x=0.7") == DataSource(uri="/data/x", weight=0.7)
    assert parse_source("s3://bucket/clips") == DataSource(uri="s3://bucket/clips")
    assert parse_source("/odd=name") == DataSource(uri="/odd=name")
    with pytest.raises(ValueError, match="> 0"):
        parse_source("/data/x=0")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_dataset(a, clips=1, per_shard=1)
    make_dataset(b, clips=1, per_shard=1)
    mix = tmp_path / "mix"
    write_mixture(str(mix), [DataSource(uri=a, weight=0.6), DataSource(uri=b, weight=0.4)])
    assert resolve_sources([f"{mix}=0.5", f"{a}=0.5"]) == [
        DataSource(uri=a, weight=0.3),
        DataSource(uri=b, weight=0.2),
        DataSource(uri=a, weight=0.5),
    ]


def test_the_store_streams_from_s3_with_ranged_reads(
    tmp_path: Path, s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = str(tmp_path / "local")
    remote = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}/data"
    make_dataset(local, clips=5, per_shard=3)
    make_dataset(remote, clips=5, per_shard=3, settings=s3_settings)
    whole: list[str] = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri, **kw: whole.append(uri) or real_read(uri, **kw))
    here, there = ClipStore(local), ClipStore(remote, settings=s3_settings)
    for ref in here.clips():
        np.testing.assert_array_equal(here.load(*ref).frames, there.load(*ref).frames)
    assert not [u for u in whole if u.endswith(".tar")]  # shards are never read whole
    assert [r.name for r in there.shards_read()] == ["shards/shard-00000.tar", "shards/shard-00001.tar"]
