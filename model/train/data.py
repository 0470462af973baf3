"""Training clips: frames + per-frame camera + captions, from a SynthWorld labelled folder or a curated
dataset, cut into fixed-length windows deterministically (sample ``i`` of epoch ``e`` is always the
same window, so a resumed run sees exactly the batches an uninterrupted one would).

This module reads files; it knows nothing of MLflow, Ray or KFP. The curated-dataset reader lives in
``worldloop.components.curation.dataset``; to keep the model package free of platform imports, the
caller hands in already-loaded :class:`TrainClip` objects for that case (see ``load_clips``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.video import check_frames, decode_video


@dataclass(frozen=True)
class TrainClip:
    """One clip in memory. ``interaction`` is the interaction caption text, if the clip has one."""

    name: str
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    intrinsics: np.ndarray  # (F, 3, 3) pixels
    c2w: np.ndarray  # (F, 4, 4) OpenCV, any origin (re-based per window)
    caption_long: str
    caption_short: str
    interaction: str | None

    def __post_init__(self) -> None:
        f = self.frames.shape[0]
        check_frames(self.frames, name=f"{self.name}: frames")
        if self.intrinsics.shape != (f, 3, 3) or self.c2w.shape != (f, 4, 4):
            raise ValueError(
                f"{self.name}: camera track must be (F, 3, 3) and (F, 4, 4) for F={f}, got "
                f"{self.intrinsics.shape} and {self.c2w.shape}"
            )


def load_synthworld(folder: str | Path) -> list[TrainClip]:
    """Every labelled clip (``NAME.mp4`` + ``NAME.json``) in a ``worldloop synth`` output folder."""
    folder = Path(folder)
    clips = []
    for meta_path in sorted(folder.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        if "c2w" not in meta or "video" not in meta:
            continue
        frames, _ = decode_video(folder / meta["video"])
        events = meta.get("events") or []
        interaction = events[0]["caption"]["text"] if events else None
        clips.append(
            TrainClip(
                name=meta["name"],
                frames=frames,
                intrinsics=np.asarray(meta["intrinsics"], np.float64),
                c2w=np.asarray(meta["c2w"], np.float64),
                caption_long=meta["captions"]["long"],
                caption_short=meta["captions"]["short"],
                interaction=interaction,
            )
        )
    if not clips:
        raise FileNotFoundError(f"no labelled clips (NAME.mp4 + NAME.json) in {folder}")
    return clips


def clip_from_mp4_bytes(
    name: str,
    data: bytes,
    *,
    intrinsics: Sequence[Sequence[Sequence[float]]],
    c2w: Sequence[Sequence[Sequence[float]]],
    caption_long: str,
    caption_short: str,
    interaction: str | None,
) -> TrainClip:
    """A clip from an MP4 in memory (e.g. a member of a curated shard)."""
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        tmp.write(data)
        tmp.flush()
        frames, _ = decode_video(tmp.name)
    return TrainClip(
        name=name,
        frames=frames,
        intrinsics=np.asarray(intrinsics, np.float64),
        c2w=np.asarray(c2w, np.float64),
        caption_long=caption_long,
        caption_short=caption_short,
        interaction=interaction,
    )


@dataclass(frozen=True)
class Window:
    """A training sample: ``frames`` video frames resized to (height, width), camera re-based."""

    video: Tensor  # (3, F, H, W) float32 in [-1, 1]
    intrinsics: Tensor  # (F, 3, 3), scaled to the resized frames
    c2w: Tensor  # (F, 4, 4), c2w[0] = identity
    caption: str  # long or short scene caption, with the interaction caption appended when present
    instruction: str | None


class WindowSampler:
    """Deterministic windows of ``frames`` frames from ``clips`` (clips shorter than that are skipped)."""

    def __init__(
        self,
        clips: Sequence[TrainClip],
        *,
        frames: int,
        height: int,
        width: int,
        seed: int,
        long_caption_prob: float = 0.5,
    ) -> None:
        self.clips = [c for c in clips if c.frames.shape[0] >= frames]
        if not self.clips:
            longest = max((c.frames.shape[0] for c in clips), default=0)
            raise ValueError(f"no clip has {frames} frames (longest: {longest}); use a shorter curriculum")
        self.frames, self.height, self.width = frames, height, width
        self.seed, self.long_caption_prob = seed, long_caption_prob

    def sample(self, index: int) -> Window:
        """Window ``index``: the clip cycles with the index, the start and caption come from the seed."""
        rng = np.random.default_rng([self.seed, index])
        clip = self.clips[int(rng.integers(len(self.clips)))]
        start = int(rng.integers(clip.frames.shape[0] - self.frames + 1))
        end = start + self.frames
        video = torch.from_numpy(np.ascontiguousarray(clip.frames[start:end])).float()
        video = video.permute(0, 3, 1, 2) / 127.5 - 1.0  # (F, 3, H, W)
        h0, w0 = video.shape[-2:]
        if (h0, w0) != (self.height, self.width):
            video = F.interpolate(video, size=(self.height, self.width), mode="bilinear", antialias=True)
        K = torch.from_numpy(clip.intrinsics[start:end].copy()).float()
        K[:, 0] *= self.width / w0
        K[:, 1] *= self.height / h0
        c2w = torch.from_numpy(np.linalg.inv(clip.c2w[start]) @ clip.c2w[start:end]).float()
        long = rng.random() < self.long_caption_prob
        caption = clip.caption_long if long else clip.caption_short
        if clip.interaction:
            caption = f"{caption} {clip.interaction}"
        return Window(video.permute(1, 0, 2, 3).clamp(-1, 1), K, c2w, caption, clip.interaction)

    def batch(self, indices: Sequence[int]) -> list[Window]:
        return [self.sample(i) for i in indices]
