"""Writing and indexing the training-data format: WebDataset tar shards plus one ``dataset.json``.

Layout under a dataset root (a folder or ``s3://`` prefix)::

    shards/shard-00000.tar   KEY.mp4, KEY.json (ClipMeta) and, when known, KEY.masks.npz per clip
    dataset.json             DatasetIndex: every shard with its sha256, and every clip's members with
                             their byte ranges and sha256 (what lets a reader take one clip without
                             reading its shard)

A shard is a plain tar that ``tar``, WebDataset and every tar reader open; members of a clip are
adjacent and share the clip's key, as WebDataset groups samples. Headers are fixed (mtime 0, uid 0),
so the same clips give the same bytes. A shard is written atomically, and ``dataset.json`` last: a
dataset with an index is complete.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worldloop import storage
from worldloop.data.schema import ClipMeta
from worldloop.settings import Settings

INDEX_FILE = "dataset.json"
SHARDS = "shards"


class Member(BaseModel):
    """One tar member's data: its byte range in the shard and its sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offset: int = Field(ge=0)
    size: int = Field(ge=0)
    sha256: str


class IndexedClip(BaseModel):
    """What a reader needs to choose a clip and fetch it: length, rate, size, the first frame's focal
    length (the data's field of view), and its members."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    frames: int
    fps: float
    width: int
    height: int
    focal_x: float
    camera: str = Field(description="truth | metadata | estimated")
    video: Member
    meta: Member
    masks: Member | None = None


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Path of the tar under the dataset root, e.g. shards/shard-00000.tar.")
    sha256: str
    size: int
    clips: list[IndexedClip]


class DatasetIndex(BaseModel):
    """``dataset.json``: the whole dataset, shard by shard."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["worldloop-clips/1"] = "worldloop-clips/1"
    kind: str = Field(description="Who wrote it: synthworld | curated | …")
    shards: list[ShardEntry]

    @property
    def clips(self) -> int:
        return sum(len(s.clips) for s in self.shards)

    @property
    def frames(self) -> int:
        return sum(c.frames for s in self.shards for c in s.clips)


@dataclass(frozen=True)
class ClipPayload:
    """One clip to write: its metadata, its MP4 bytes and, when ``meta.masks``, its mask NPZ bytes."""

    meta: ClipMeta
    video: bytes
    masks: bytes | None = None

    def __post_init__(self) -> None:
        if self.meta.masks != (self.masks is not None):
            raise ValueError(
                f"{self.meta.key}: meta.masks={self.meta.masks} but masks bytes are "
                f"{'absent' if self.masks is None else 'present'}"
            )


def pack_masks(masks: np.ndarray) -> bytes:
    """``KEY.masks.npz``: (F, H, W) bool masks, bit-packed along W, compressed."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, masks=np.packbits(masks, axis=-1), shape=np.array(masks.shape))
    return buffer.getvalue()


def unpack_masks(source: str | Path | bytes) -> np.ndarray:
    """Inverse of :func:`pack_masks` (from a file or its bytes): (F, H, W) bool."""
    with np.load(io.BytesIO(source) if isinstance(source, bytes) else source) as data:
        shape = tuple(int(s) for s in data["shape"])
        return np.unpackbits(data["masks"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)


def shard_path(index: int) -> str:
    return f"{SHARDS}/shard-{index:05d}.tar"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(members: Sequence[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pack_shard(name: str, clips: Sequence[ClipPayload]) -> tuple[bytes, ShardEntry]:
    """The tar bytes of ``clips`` and their index entry (member byte ranges read back from the tar)."""
    keys = [c.meta.key for c in clips]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name}: duplicate clip keys")
    members: list[tuple[str, bytes]] = []
    for clip in clips:
        members.append((f"{clip.meta.key}.mp4", clip.video))
        members.append((f"{clip.meta.key}.json", clip.meta.model_dump_json().encode()))
        if clip.masks is not None:
            members.append((f"{clip.meta.key}.masks.npz", clip.masks))
    data = _tar(members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offsets = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}

    def member(name: str) -> Member:
        offset, size = offsets[name]
        return Member(offset=offset, size=size, sha256=sha256(data[offset : offset + size]))

    entries = [
        IndexedClip(
            key=c.meta.key,
            frames=c.meta.frames,
            fps=c.meta.fps,
            width=c.meta.width,
            height=c.meta.height,
            focal_x=float(c.meta.camera.intrinsics[0][0][0]),
            camera=c.meta.camera.source,
            video=member(f"{c.meta.key}.mp4"),
            meta=member(f"{c.meta.key}.json"),
            masks=member(f"{c.meta.key}.masks.npz") if c.masks is not None else None,
        )
        for c in clips
    ]
    return data, ShardEntry(name=name, sha256=sha256(data), size=len(data), clips=entries)


def write_shard(
    root: str, name: str, clips: Sequence[ClipPayload], *, settings: Settings | None = None
) -> ShardEntry:
    """Write one shard under ``root`` (atomically) and return its index entry."""
    data, entry = pack_shard(name, clips)
    storage.write_bytes(storage.join(root, name), data, settings=settings)
    return entry


def write_index(
    root: str, kind: str, shards: Sequence[ShardEntry], *, settings: Settings | None = None
) -> DatasetIndex:
    """Write ``dataset.json`` (last: its presence means the dataset is complete)."""
    keys = [c.key for s in shards for c in s.clips]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{root}: a clip key appears in two shards")
    index = DatasetIndex(kind=kind, shards=list(shards))
    storage.write_bytes(
        storage.join(root, INDEX_FILE), index.model_dump_json(indent=1).encode(), settings=settings
    )
    return index


def read_index(root: str, *, settings: Settings | None = None) -> DatasetIndex:
    """The index of the dataset at ``root``; a clear error when ``root`` holds none."""
    uri = storage.join(root, INDEX_FILE)
    try:
        data = storage.read_bytes(uri, settings=settings)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{root} is not a worldloop dataset (no {INDEX_FILE}): write one with `worldloop synth` or "
            "`worldloop curate`"
        ) from exc
    return DatasetIndex.model_validate_json(data)
