"""Finding text-video pairs under a directory or ``s3://`` prefix, and reading their captions.

A pair is ``STEM.<video>`` plus an optional ``STEM.txt`` caption and an optional ``STEM.json``
metadata sidecar (e.g. SynthWorld's labelled clips: intrinsics and camera-to-world poses). Folders
whose name starts with ``_`` or ``.`` are not data (SynthWorld keeps its ground truth in ``_truth/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from worldloop import storage
from worldloop.settings import Settings

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


@dataclass(frozen=True)
class SourcePair:
    """One input item; ``name`` is its path relative to the input root without the suffix."""

    name: str
    video_uri: str
    caption_uri: str | None
    metadata_uri: str | None


def _relative(uri: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    if not uri.startswith(root):
        raise ValueError(f"{uri} is not under {root}")
    return uri[len(root) :]


def discover(input_uri: str, *, settings: Settings | None = None) -> list[SourcePair]:
    """Every video under ``input_uri`` with its caption/metadata, sorted by name (deterministic)."""
    uris = storage.list_uris(input_uri, settings=settings)
    by_stem: dict[str, dict[str, str]] = {}
    for uri in uris:
        rel = _relative(uri, input_uri)
        if any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue
        stem, dot, suffix = rel.rpartition(".")
        if not dot:
            continue
        by_stem.setdefault(stem, {})["." + suffix.lower()] = uri
    pairs = []
    for stem in sorted(by_stem):
        files = by_stem[stem]
        videos = [files[s] for s in VIDEO_SUFFIXES if s in files]
        if not videos:
            continue
        pairs.append(SourcePair(stem, videos[0], files.get(".txt"), files.get(".json")))
    if not pairs and not uris:
        raise FileNotFoundError(f"no files under {input_uri}")
    return pairs


def decode_caption(data: bytes) -> tuple[str | None, str | None]:
    """(caption, note): UTF-8 first (BOM allowed), else Windows-1252/Latin-1, never an error.

    An empty or whitespace-only caption is None. The note says what was done to read it.
    """
    note = None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text, note = data.decode("cp1252"), "caption was not UTF-8; decoded as Windows-1252"
        except UnicodeDecodeError:
            text, note = data.decode("latin-1"), "caption was not UTF-8; decoded as Latin-1"
    text = " ".join(text.split())
    return (text or None), note


def read_metadata_camera(data: bytes, num_frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Intrinsics (F, 3, 3) and c2w (F, 4, 4) from a JSON sidecar, when it has a usable camera track."""
    try:
        meta: Any = json.loads(data)
        K = np.asarray(meta["intrinsics"], np.float64)
        c2w = np.asarray(meta["c2w"], np.float64)
    except (ValueError, KeyError, TypeError):
        return None
    if K.shape != (num_frames, 3, 3) or c2w.shape != (num_frames, 4, 4):
        return None
    if not (np.isfinite(K).all() and np.isfinite(c2w).all()):
        return None
    return K, c2w
