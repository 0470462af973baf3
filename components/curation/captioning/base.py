"""Captioner protocol, request/result types and text helpers shared by the captioners."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from worldloop.data import Captions, InteractionCaption
from worldloop.platform.chat import ChatError

# --------------------------------------------------------------------------------------------------
# Request / result types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InteractionCandidate:
    """A persistent, non-camera change found by the pipeline's visual interaction miner."""

    onset_frame: int  # first frame of the state transition
    score: float  # strength of the change, >= 0
    bbox: tuple[int, int, int, int] | None  # x0, y0, x1, y1 of the changed region; None if global
    global_change: bool  # whole-frame change (lighting, weather) rather than a local one

    def __post_init__(self) -> None:
        if self.onset_frame < 0:
            raise ValueError(f"onset_frame must be >= 0, got {self.onset_frame}")
        if not math.isfinite(self.score) or self.score < 0:
            raise ValueError(f"score must be a finite number >= 0, got {self.score}")
        if self.bbox is not None:
            if len(self.bbox) != 4:
                raise ValueError(f"bbox must be (x0, y0, x1, y1), got {self.bbox}")
            x0, y0, x1, y1 = self.bbox
            if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
                raise ValueError(f"bbox must satisfy 0 <= x0 < x1 and 0 <= y0 < y1, got {self.bbox}")


@dataclass(frozen=True, eq=False)
class CaptionRequest:
    """Everything a captioner may look at for one clip."""

    clip_id: str
    frames: list[np.ndarray]  # a few keyframes (H, W, 3) uint8 RGB, in time order
    frame_indices: list[int]  # their indices in the clip
    num_frames: int
    fps: float
    source_caption: str | None  # the scraped text; may be None or messy
    camera_motion: str  # e.g. "the camera moves forward and turns left"
    interaction: InteractionCandidate | None

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not math.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if len(self.frames) != len(self.frame_indices):
            raise ValueError(
                f"{len(self.frames)} frames but {len(self.frame_indices)} frame indices for {self.clip_id}"
            )
        for frame in self.frames:
            if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
                raise ValueError("keyframes must be uint8 numpy arrays")
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
                raise ValueError(f"keyframes must be (H, W, 3) RGB, got shape {frame.shape}")
        if any(not 0 <= i < self.num_frames for i in self.frame_indices):
            raise ValueError(f"frame indices must lie in [0, {self.num_frames}), got {self.frame_indices}")
        if any(b <= a for a, b in zip(self.frame_indices, self.frame_indices[1:], strict=False)):
            raise ValueError(f"frame indices must be strictly increasing, got {self.frame_indices}")
        if self.interaction is not None and self.interaction.onset_frame >= self.num_frames:
            raise ValueError(
                f"interaction onset {self.interaction.onset_frame} is past the clip's end "
                f"({self.num_frames} frames)"
            )

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(width, height) of the keyframes, or None without any."""
        if not self.frames:
            return None
        return int(self.frames[0].shape[1]), int(self.frames[0].shape[0])


class CaptionResult(BaseModel):
    """What a captioner returns for one clip."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    captions: Captions
    interaction: InteractionCaption | None
    captioner: str = Field(min_length=1, description="Who wrote it, e.g. 'rules' or 'chat:<model>'.")

    @model_validator(mode="after")
    def _check(self) -> CaptionResult:
        if not self.captions.long.strip() or not self.captions.short.strip():
            raise ValueError("long and short captions must not be empty")
        if "\n" in self.captions.short or "\r" in self.captions.short:
            raise ValueError("the short caption must be a single line")
        return self


class CaptionError(ChatError):
    """A captioner could not produce a caption (endpoint down, bad answers, ...); ``endpoint``,
    ``attempts`` and ``reason`` as in :class:`ChatError`."""


@runtime_checkable
class Captioner(Protocol):
    """Anything that turns a :class:`CaptionRequest` into a :class:`CaptionResult`."""

    name: str

    def caption(self, request: CaptionRequest) -> CaptionResult: ...


# --------------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"\s*(?:[,;:.!?()\[\]{}|/\n\r\t]|\s[-–—]+\s|[–—])\s*")
_HTML = re.compile(r"<[^>]{0,200}>")
_URL = re.compile(r"(?:https?://|www\.)\S+")
_KEEP_PUNCT = set(",;:.!?()-'–— ")
_FILLER = {"4k", "hd", "1080p", "720p", "60fps", "30fps", "gameplay", "footage", "video", "clip"}


def clean_text(text: str | None, max_chars: int = 4000) -> str:
    """Lower-case, printable text: mojibake words (with U+FFFD), markup, URLs and symbols removed;
    only the first ``max_chars`` characters are read."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text[:max_chars])
    text = _URL.sub(" ", _HTML.sub(" ", text)).replace("_", " ").replace("#", " ").replace("@", " ")
    words = []
    for token in text.split():
        if "\ufffd" in token:  # a word the decoder could not read: drop it whole, not half of it
            continue
        kept = "".join(ch for ch in token if ch in _KEEP_PUNCT or unicodedata.category(ch)[0] in "LN").strip(
            "-'"
        )
        if any(ch.isalnum() for ch in kept) or (kept and kept[0] in ",;:.!?–—"):
            words.append(kept)
    return " ".join(words).lower().strip()


def _clauses(text: str) -> list[str]:
    return [c.strip(" -'") for c in _SEPARATORS.split(text) if c.strip(" -'")]


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".,;: ")
    if not text:
        return ""
    return text[0].upper() + text[1:] + "."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _clip_words(text: str, limit: int) -> str:
    words = text.split()
    return text if len(words) <= limit else " ".join(words[:limit])


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;: ")
    return cut + "…"


def region_phrase(bbox: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    """Where a box sits in the view, e.g. 'in the centre of the view', 'on the left of the view'."""
    width, height = size
    cx = (bbox[0] + bbox[2]) / 2 / max(width, 1)
    cy = (bbox[1] + bbox[3]) / 2 / max(height, 1)
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    vert = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle"
    if horiz == "centre" and vert == "middle":
        return "in the centre of the view"
    if vert == "middle":
        return f"on the {horiz} of the view"
    if horiz == "centre":
        return f"in the {vert} part of the view"
    return f"in the {vert} {horiz} of the view"
