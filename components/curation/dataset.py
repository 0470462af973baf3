"""The curated dataset on disk (or S3): the training-data format (:mod:`worldloop.data`) plus the
curation's own records.

Layout under the output root::

    shards/shard-00000.tar    CLIP_ID.mp4 + CLIP_ID.json (ClipMeta) per clip — what training reads
    shards/shard-00000.json   the shard's result: sources, clips, quarantine, config hash, index entry
                              (done marker)
    dataset.json              the training-data index: every shard's sha256 and member byte ranges
    manifest.jsonl            every kept clip with its curation record (shot, piece, stats…), shard order
    quarantine.jsonl          every dropped input or shot, with its reason
    summary.json              counts: kept, dropped by reason, frames, camera sources
    config.json               the CurationConfig that produced it

Shards are written atomically, tar first and the shard JSON last, so a shard JSON means a complete
shard; ``dataset.json`` is written after the manifest, so it means a complete dataset. Tar members
carry fixed metadata (mtime 0, uid 0), so the same inputs give the same bytes.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from worldloop import storage
from worldloop.components.curation.quality import Reason
from worldloop.data import CameraTrack, Captions, ClipMeta, ClipPayload, InteractionCaption, ShardEntry
from worldloop.data import write_shard as write_data_shard
from worldloop.settings import Settings

SHARDS = "shards"


class CuratedClip(BaseModel):
    """One kept clip as curation records it (a manifest row); its shard member is :func:`clip_meta`."""

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
    entry: ShardEntry = Field(description="The shard's entry in dataset.json.")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_result_uri(root: str, shard: str) -> str:
    return storage.join(root, SHARDS, f"{shard}.json")


def clip_meta(clip: CuratedClip) -> ClipMeta:
    """The training-data view of a curated clip: what curation knows (no actions, no events)."""
    return ClipMeta(
        key=clip.clip_id,
        source=clip.source,
        frames=clip.frames,
        fps=clip.fps,
        width=clip.width,
        height=clip.height,
        camera=clip.camera,
        captions=clip.captions,
        interaction=clip.interaction,
        interaction_onset=clip.interaction_onset,
    )


def write_shard_files(
    root: str,
    shard: str,
    clips: list[CuratedClip],
    videos: dict[str, bytes],
    *,
    settings: Settings | None = None,
) -> ShardEntry:
    """Write the shard tar (atomic); its index entry goes into the shard result, written next."""
    payloads = [ClipPayload(clip_meta(c), videos[c.clip_id]) for c in clips]
    return write_data_shard(root, f"{SHARDS}/{shard}.tar", payloads, settings=settings)


def write_shard_result(root: str, result: ShardResult, *, settings: Settings | None = None) -> None:
    """The shard's result JSON (the done marker), after its tar."""
    storage.write_bytes(
        shard_result_uri(root, result.shard), result.model_dump_json(indent=1).encode(), settings=settings
    )


def read_shard_result(root: str, shard: str, *, settings: Settings | None = None) -> ShardResult | None:
    """The shard's result when the shard is complete, else None."""
    uri = shard_result_uri(root, shard)
    if not storage.exists(uri, settings=settings):
        return None
    return ShardResult.model_validate_json(storage.read_bytes(uri, settings=settings))


def read_manifest(root: str, *, settings: Settings | None = None) -> list[CuratedClip]:
    text = storage.read_bytes(storage.join(root, "manifest.jsonl"), settings=settings).decode()
    return [CuratedClip.model_validate_json(line) for line in text.splitlines() if line.strip()]


def read_quarantine(root: str, *, settings: Settings | None = None) -> list[QuarantineEntry]:
    text = storage.read_bytes(storage.join(root, "quarantine.jsonl"), settings=settings).decode()
    return [QuarantineEntry.model_validate_json(line) for line in text.splitlines() if line.strip()]


def jsonl(rows: list[BaseModel]) -> bytes:
    return "".join(json.dumps(r.model_dump(mode="json"), sort_keys=True) + "\n" for r in rows).encode()
