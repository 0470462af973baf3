"""Small datasets in the training-data format, written directly (no SynthWorld render): smooth moving
patterns per clip, a forward camera track, ``frames`` frames at ``size`` px, ``per_shard`` clips per shard."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from worldloop.data import (
    CameraTrack,
    Captions,
    ClipMeta,
    ClipPayload,
    InteractionCaption,
    shard_path,
    write_index,
    write_shard,
)
from worldloop.settings import Settings
from worldloop.video import encode_mp4


def _frames(seed: int, frames: int, size: int) -> np.ndarray:
    """A smooth moving pattern (compresses like video, differs per seed)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for t in range(frames):
        r = 127 + 100 * np.sin((x + 3 * t + seed * 7) / 9)
        g = 127 + 100 * np.cos((y - 2 * t + seed * 5) / 11)
        b = np.full_like(x, (seed * 37) % 256)
        out.append(np.stack([r, g, b], -1))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


DOOR = InteractionCaption(
    agent="the player",
    action="opens",
    object="the door",
    state_change="closed to open",
    text="the player opens the door",
    instruction="open the door",
)


def _meta(key: str, frames: int, size: int, onset: int | None = None) -> ClipMeta:
    c2w = []
    for t in range(frames):
        pose = np.eye(4)
        pose[2, 3] = 0.05 * t  # forward
        c2w.append(pose.tolist())
    k = [[[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]]] * frames
    return ClipMeta(
        key=key,
        source=f"test:{key}",
        frames=frames,
        fps=16,
        width=size,
        height=size,
        camera=CameraTrack(source="estimated", confidence=0.8, intrinsics=k, c2w=c2w),
        captions=Captions(long=f"long {key}", short=f"short {key}"),
        interaction=DOOR if onset is not None else None,
        interaction_onset=onset,
    )


def make_dataset(
    root: str,
    *,
    clips: int,
    per_shard: int,
    frames: int = 9,
    size: int = 48,
    prefix: str = "c",
    settings: Settings | None = None,
    interaction_onset: int | None = None,
) -> None:
    """``interaction_onset``: every clip gets the door interaction, issued at that frame."""
    with tempfile.TemporaryDirectory() as tmp:
        shards = []
        for s, start in enumerate(range(0, clips, per_shard)):
            payloads = []
            for i in range(start, min(clips, start + per_shard)):
                path = Path(tmp) / f"{i}.mp4"
                encode_mp4(_frames(i, frames, size), path, fps=16)
                meta = _meta(f"{prefix}{i:04d}", frames, size, interaction_onset)
                payloads.append(ClipPayload(meta, path.read_bytes()))
            shards.append(write_shard(root, shard_path(s), payloads, settings=settings))
        write_index(root, "test", shards, settings=settings)
