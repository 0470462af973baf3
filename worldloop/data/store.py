"""Reading one dataset clip by clip, with flat memory.

A :class:`ClipStore` holds only the dataset's index. Loading a clip reads its members' byte range
from the shard (a local seek or one S3 ranged GET: the shard itself is never read whole), checks each
member against the sha256 the index recorded, decodes the MP4 and keeps the result in an LRU cache
bounded in bytes. Memory therefore depends on the cache budget, not on the dataset's size.

The store also keeps the log of what it read — which shards, how many clips of each — from which a
checkpoint's data lineage is written: the lineage is what was read, not what was configured.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from worldloop import storage
from worldloop.data.schema import ClipMeta
from worldloop.data.shards import DatasetIndex, IndexedClip, Member, read_index, sha256, unpack_masks
from worldloop.settings import Settings
from worldloop.video import check_frames, decode_video

DEFAULT_CACHE_BYTES = 2**30  # decoded clips per process: 200 of 33 frames at 128 px fit


@dataclass(frozen=True)
class LoadedClip:
    """One decoded clip: frames (F, H, W, 3) uint8 and its camera as arrays, with its metadata."""

    meta: ClipMeta
    frames: np.ndarray
    intrinsics: np.ndarray  # (F, 3, 3) pixels
    c2w: np.ndarray  # (F, 4, 4)

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes + self.intrinsics.nbytes + self.c2w.nbytes)

    @property
    def interaction(self) -> str | None:
        return self.meta.interaction.text if self.meta.interaction else None


class DataIntegrityError(ValueError):
    """A member's bytes do not match the sha256 the dataset's index recorded."""


@dataclass(frozen=True)
class ShardRead:
    """A shard the store read from: its name and sha256 (from the index) and how many clip loads."""

    name: str
    sha256: str
    clips_read: int


class ClipStore:
    """The dataset at ``uri`` (local folder or ``s3://``), read clip by clip; decoded clips are cached
    up to ``cache_bytes`` (least recently used first out; a clip larger than the budget is returned
    but not kept)."""

    def __init__(
        self, uri: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES, settings: Settings | None = None
    ) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be ≥ 0, got {cache_bytes}")
        self.uri, self.settings, self.cache_bytes = uri, settings, cache_bytes
        self.index: DatasetIndex = read_index(uri, settings=settings)
        if not self.index.clips:
            raise ValueError(f"{uri}: the dataset holds no clips")
        self._cache: OrderedDict[tuple[int, int], LoadedClip] = OrderedDict()
        self.cached_bytes = 0
        self.peak_cached_bytes = 0
        self.fetches = 0
        self._reads: dict[int, int] = {}
        self._keys: dict[str, tuple[int, int]] | None = None  # key -> (shard, clip), built on first find

    def entry(self, shard: int, clip: int) -> IndexedClip:
        return self.index.shards[shard].clips[clip]

    def find(self, key: str) -> tuple[int, int] | None:
        """(shard, clip) of the clip stored as ``key``, or None."""
        if self._keys is None:
            self._keys = {
                c.key: (s, i) for s, shard in enumerate(self.index.shards) for i, c in enumerate(shard.clips)
            }
        return self._keys.get(key)

    def clips(self, *, min_frames: int = 1) -> list[tuple[int, int]]:
        """(shard, clip) of every clip with at least ``min_frames`` frames, in index order."""
        return [
            (s, c)
            for s, shard in enumerate(self.index.shards)
            for c, clip in enumerate(shard.clips)
            if clip.frames >= min_frames
        ]

    def load(self, shard: int, clip: int) -> LoadedClip:
        key = (shard, clip)
        self._reads[shard] = self._reads.get(shard, 0) + 1
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        loaded = self._fetch(shard, clip)
        if loaded.nbytes <= self.cache_bytes:
            while self._cache and self.cached_bytes + loaded.nbytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self.cached_bytes -= old.nbytes
            self._cache[key] = loaded
            self.cached_bytes += loaded.nbytes
            self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)
        return loaded

    def masks(self, shard: int, clip: int) -> np.ndarray | None:
        """The clip's affected-region masks (F, H, W) bool, when its writer knew them."""
        entry = self.entry(shard, clip)
        if entry.masks is None:
            return None
        return unpack_masks(self._member(shard, entry.masks, f"{entry.key}.masks.npz"))

    def shards_read(self) -> list[ShardRead]:
        """Every shard a clip was loaded from (cache hits included), in index order."""
        return [
            ShardRead(self.index.shards[s].name, self.index.shards[s].sha256, n)
            for s, n in sorted(self._reads.items())
        ]

    def _member(self, shard: int, member: Member, what: str) -> bytes:
        data = storage.read_range(
            storage.join(self.uri, self.index.shards[shard].name),
            member.offset,
            member.size,
            settings=self.settings,
        )
        self._verify(shard, member, data, what)
        return data

    def _verify(self, shard: int, member: Member, data: bytes, what: str) -> None:
        if len(data) != member.size or sha256(data) != member.sha256:
            raise DataIntegrityError(
                f"{self.uri}: {self.index.shards[shard].name}:{what} does not match the dataset index "
                f"(read {len(data)} bytes, expected {member.size} with sha256 {member.sha256[:12]}…): "
                "the shard changed after the index was written"
            )

    def _fetch(self, shard: int, clip: int) -> LoadedClip:
        entry = self.entry(shard, clip)
        self.fetches += 1
        video, meta = entry.video, entry.meta
        # a clip's members are adjacent (KEY.mp4 then KEY.json): one read covers both
        start, end = min(video.offset, meta.offset), max(video.offset + video.size, meta.offset + meta.size)
        if end - start <= video.size + meta.size + 4096:
            block = storage.read_range(
                storage.join(self.uri, self.index.shards[shard].name),
                start,
                end - start,
                settings=self.settings,
            )
            video_bytes = block[video.offset - start : video.offset - start + video.size]
            meta_bytes = block[meta.offset - start : meta.offset - start + meta.size]
            self._verify(shard, video, video_bytes, f"{entry.key}.mp4")
            self._verify(shard, meta, meta_bytes, f"{entry.key}.json")
        else:
            video_bytes = self._member(shard, video, f"{entry.key}.mp4")
            meta_bytes = self._member(shard, meta, f"{entry.key}.json")
        info = ClipMeta.model_validate_json(meta_bytes)
        frames, _ = decode_video(video_bytes)
        check_frames(frames, name=f"{self.uri}: {entry.key}")
        if frames.shape[0] != info.frames:
            raise DataIntegrityError(
                f"{self.uri}: {entry.key} decodes to {frames.shape[0]} frames, "
                f"its metadata says {info.frames}"
            )
        return LoadedClip(
            meta=info,
            frames=frames,
            intrinsics=np.asarray(info.camera.intrinsics, np.float64),
            c2w=np.asarray(info.camera.c2w, np.float64),
        )
