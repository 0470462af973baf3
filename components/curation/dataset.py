"""The curated dataset on disk (or S3): WebDataset-style tar shards plus a JSONL manifest.

Layout under the output root::

    shards/shard-00000.tar    CLIP_ID.mp4 + CLIP_ID.json per clip (the JSON is the manifest row)
    shards/shard-00000.json   the shard's result: sources, clips, quarantine, config hash (done marker)
    manifest.jsonl            every kept clip, shard order
    quarantine.jsonl          every dropped input or shot, with its reason
    summary.json              counts: kept, dropped by reason, frames, camera sources
    config.json               the CurationConfig that produced it

Shards are written atomically, tar first and the shard JSON last, so a shard JSON means a complete
shard. Tar members carry fixed metadata (mtime 0, uid 0), so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from worldloop import storage
from worldloop.components.curation.quality import Reason
from worldloop.components.synthworld.schema import Captions, InteractionCaption
from worldloop.settings import Settings

SHARDS = "shards"


class CameraTrack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["metadata", "estimated"]
    confidence: float = Field(description="1 for metadata; the estimator's confidence otherwise.")
    intrinsics: list[list[list[float]]] = Field(description="K per frame, (F, 3, 3), pixels.")
    c2w: list[list[list[float]]] = Field(
        description="Camera-to-world per frame, (F, 4, 4), OpenCV, c2w[0]=I."
    )


class CuratedClip(BaseModel):
    """One kept clip: a manifest row and the JSON member next to its MP4 in the shard."""

    model_config = ConfigDict(extra="forbid")

    clip_id: str
    shard: str
    video: str = Field(description="Member name of the MP4 inside the shard tar.")
    source: str = Field(description="URI of the input video.")
    source_name: str
    shot: int = Field(description="Shot index within the source (0 when there was no cut).")
    piece: int = Field(description="Piece of a shot longer than max_frames.")
    start_frame: int = Field(description="First source frame of the clip.")
    frames: int
    fps: float
    width: int
    height: int
    camera: CameraTrack
    captions: Captions
    interaction: InteractionCaption | None
    interaction_onset: int | None = Field(description="Clip frame where the state transition starts.")
    captioner: str
    source_caption: str | None
    caption_note: str | None
    stats: dict[str, float]


class QuarantineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    source_name: str
    reason: Reason
    detail: str
    shot: int | None = None
    start_frame: int | None = None
    end_frame: int | None = None


class ShardResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shard: str
    config_hash: str
    sources: list[str]
    clips: list[CuratedClip]
    quarantine: list[QuarantineEntry]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_tar_uri(root: str, shard: str) -> str:
    return storage.join(root, SHARDS, f"{shard}.tar")


def shard_result_uri(root: str, shard: str) -> str:
    return storage.join(root, SHARDS, f"{shard}.json")


def build_tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of ``members`` (name, bytes) in order, with reproducible headers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_shard(
    root: str,
    result: ShardResult,
    videos: dict[str, bytes],
    *,
    settings: Settings | None = None,
) -> None:
    """Write the shard tar, then its result JSON (the done marker); both atomic."""
    members: list[tuple[str, bytes]] = []
    for clip in result.clips:
        members.append((clip.video, videos[clip.clip_id]))
        members.append((f"{clip.clip_id}.json", clip.model_dump_json().encode()))
    storage.write_bytes(shard_tar_uri(root, result.shard), build_tar(members), settings=settings)
    storage.write_bytes(
        shard_result_uri(root, result.shard), result.model_dump_json(indent=1).encode(), settings=settings
    )


def read_shard_result(root: str, shard: str, *, settings: Settings | None = None) -> ShardResult | None:
    """The shard's result when the shard is complete, else None."""
    uri = shard_result_uri(root, shard)
    if not storage.exists(uri, settings=settings):
        return None
    return ShardResult.model_validate_json(storage.read_bytes(uri, settings=settings))


def iter_clips(root: str, *, settings: Settings | None = None) -> Iterator[tuple[CuratedClip, bytes]]:
    """Every kept clip of a finished dataset with its MP4 bytes, in manifest order."""
    manifest = read_manifest(root, settings=settings)
    by_shard: dict[str, list[CuratedClip]] = {}
    for clip in manifest:
        by_shard.setdefault(clip.shard, []).append(clip)
    for shard, clips in by_shard.items():
        data = storage.read_bytes(shard_tar_uri(root, shard), settings=settings)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for clip in clips:
                member = tar.extractfile(clip.video)
                if member is None:
                    raise ValueError(f"{shard}: missing member {clip.video}")
                yield clip, member.read()


def read_manifest(root: str, *, settings: Settings | None = None) -> list[CuratedClip]:
    text = storage.read_bytes(storage.join(root, "manifest.jsonl"), settings=settings).decode()
    return [CuratedClip.model_validate_json(line) for line in text.splitlines() if line.strip()]


def read_quarantine(root: str, *, settings: Settings | None = None) -> list[QuarantineEntry]:
    text = storage.read_bytes(storage.join(root, "quarantine.jsonl"), settings=settings).decode()
    return [QuarantineEntry.model_validate_json(line) for line in text.splitlines() if line.strip()]


def jsonl(rows: list[BaseModel]) -> bytes:
    return "".join(json.dumps(r.model_dump(mode="json"), sort_keys=True) + "\n" for r in rows).encode()
