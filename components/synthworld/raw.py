"""``--raw``: unstructured text-video pairs (``NAME.mp4`` + ``NAME.txt``) as found in the wild, with
deliberately bad items mixed in for curation to catch. What each item really is goes to
``_truth/`` (full ClipRecord for good renders, and ``_truth/index.jsonl`` with the defect), which
curation never reads but its tests do."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from worldloop.components.synthworld.clip import Clip, generate_clip
from worldloop.components.synthworld.config import SynthConfig
from worldloop.components.synthworld.writer import atomic_text, clip_name, clip_record, clip_seed
from worldloop.video import encode_mp4

TRUTH = "_truth"


class Defect(str, Enum):
    none = "none"
    truncated = "truncated"  # the MP4 is cut short: undecodable container
    zero_byte = "zero_byte"
    black = "black"
    static = "static"
    scene_cut = "scene_cut"  # two shots joined by a hard cut (curation must split it)
    too_short = "too_short"
    missing_caption = "missing_caption"
    non_utf8_caption = "non_utf8_caption"


class RawTruth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    defect: Defect
    frames: int  # frames actually written (0 for an unreadable file)
    cut_frame: int | None = None  # first frame of the second shot
    caption: str | None = None


def loose_caption(clip: Clip) -> str:
    """The kind of caption scraped text-video pairs come with: short, lower-case, incomplete."""
    text = clip.captions.short.rstrip(".").lower()
    if clip.interaction is not None:
        text += f", {clip.interaction.text.rstrip('.').lower()}"
    return text


def assign_defects(clips: int, seed: int, bad_fraction: float) -> list[Defect]:
    """Defect per item: bad ones cycle through every defect kind, positions shuffled by seed."""
    kinds = [d for d in Defect if d is not Defect.none]
    num_bad = round(clips * bad_fraction)
    roles = [kinds[i % len(kinds)] for i in range(num_bad)] + [Defect.none] * (clips - num_bad)
    np.random.default_rng([seed, 1]).shuffle(roles)  # type: ignore[arg-type]
    return roles


def _frames_for(
    defect: Defect, clip: Clip, cfg: SynthConfig, seed: int, index: int
) -> tuple[np.ndarray, int | None]:
    frames, cut = clip.frames, None
    if defect is Defect.black:
        frames = np.zeros_like(frames)
    elif defect is Defect.static:
        frames = np.repeat(frames[:1], len(frames), axis=0)
    elif defect is Defect.too_short:
        frames = frames[: max(2, min(5, len(frames) // 6))]
    elif defect is Defect.scene_cut:
        other = generate_clip(cfg, clip_seed(seed + 7919, index), any_event=False).frames
        cut = int(
            np.random.default_rng([seed, index, 2]).integers(len(frames) // 3, 2 * len(frames) // 3 + 1)
        )
        frames = np.concatenate([frames[:cut], other[cut:]])
    return frames, cut


def write_raw_item(out: Path, cfg: SynthConfig, seed: int, index: int, defect: Defect) -> RawTruth:
    name = clip_name(index)
    clip = generate_clip(cfg, clip_seed(seed, index))
    frames, cut = _frames_for(defect, clip, cfg, seed, index)
    video = out / f"{name}.mp4"
    if defect is Defect.zero_byte:
        video.write_bytes(b"")
    else:
        encode_mp4(frames, video, fps=cfg.fps, crf=cfg.crf)
        if defect is Defect.truncated:
            data = video.read_bytes()
            video.write_bytes(data[: len(data) // 2])
    caption = loose_caption(clip)
    if defect is Defect.non_utf8_caption:
        (out / f"{name}.txt").write_bytes((caption + " — café crème").encode("latin-1", errors="replace"))
    elif defect is not Defect.missing_caption:
        atomic_text(out / f"{name}.txt", caption + "\n")
    if defect in (Defect.none, Defect.missing_caption, Defect.non_utf8_caption):
        atomic_text(out / TRUTH / f"{name}.json", clip_record(clip, name, cfg).model_dump_json(indent=1))
    written = 0 if defect in (Defect.zero_byte, Defect.truncated) else len(frames)
    return RawTruth(name=name, defect=defect, frames=written, cut_frame=cut, caption=caption)


def write_raw(
    out: str | Path,
    cfg: SynthConfig,
    *,
    clips: int,
    seed: int,
    bad_fraction: float = 0.4,
    progress: Callable[[RawTruth], None] | None = None,
) -> list[RawTruth]:
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError(f"bad_fraction must be in [0, 1], got {bad_fraction}")
    out = Path(out)
    (out / TRUTH).mkdir(parents=True, exist_ok=True)
    truths = []
    for i, defect in enumerate(assign_defects(clips, seed, bad_fraction)):
        truth = write_raw_item(out, cfg, seed, i, defect)
        truths.append(truth)
        if progress:
            progress(truth)
    atomic_text(
        out / TRUTH / "index.jsonl", "".join(json.dumps(t.model_dump(mode="json")) + "\n" for t in truths)
    )
    return truths
