"""Shot-boundary detection and splitting.

A hard cut is a frame pair whose content the optical flow cannot explain: the intensity residual is
high in absolute terms, and both the intensity and the gradient residuals spike above their
neighbours (fast camera motion raises the whole neighbourhood; a cut is a spike in both). Gradients
ignore smooth lighting changes, so flashes and night falling do not spike them.

Calibrated on 48 injected cuts in SynthWorld H.264 clips (64 and 128 px) and 2,040 cut-free pairs
with every event kind: 47 cuts found at the exact frame, 0 false cuts. Weather starting (snow,
rain) also spikes both residuals but leaves them raised, so a lasting level shift rules a cut out.
"""

from __future__ import annotations

import numpy as np

from worldloop.components.curation.config import ShotConfig
from worldloop.components.curation.signals import PairSignals, relative_to_neighbours


def detect_cuts(signals: PairSignals, cfg: ShotConfig) -> list[int]:
    """First frame of every new shot, ascending (empty for one continuous shot)."""
    if signals.num_frames < 2:
        return []
    edge_ratio = relative_to_neighbours(
        signals.edge_residual, radius=cfg.neighbour_radius, floor=cfg.edge_floor
    )
    residual_ratio = relative_to_neighbours(
        signals.residual, radius=cfg.neighbour_radius, floor=cfg.residual_floor
    )
    candidate = (
        (signals.residual >= cfg.min_residual)
        & (edge_ratio >= cfg.min_edge_ratio)
        & (residual_ratio >= cfg.min_residual_ratio)
        & (edge_ratio * residual_ratio >= cfg.min_joint_ratio)
    )
    pairs = [
        int(i)
        for i in np.flatnonzero(candidate)
        if _level_shift(signals.residual, int(i), cfg) < cfg.max_level_shift
    ]
    # Non-maximum suppression: of cuts closer than min_gap frames, keep the strongest.
    kept: list[int] = []
    for i in sorted(pairs, key=lambda p: -signals.residual[p]):
        if all(abs(i - k) >= cfg.min_gap for k in kept):
            kept.append(i)
    return sorted(i + 1 for i in kept)


def _level_shift(residual: np.ndarray, i: int, cfg: ShotConfig) -> float:
    """Residual level after pair ``i`` over the level before it (medians of ``neighbour_radius`` pairs)."""
    r = cfg.neighbour_radius
    before, after = residual[max(0, i - r) : i], residual[i + 1 : i + 1 + r]
    if len(before) == 0 or len(after) == 0:
        return 1.0
    return float(np.median(after)) / max(float(np.median(before)), cfg.residual_floor)


def shot_ranges(num_frames: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the shots between ``cuts``."""
    bounds = [0, *cuts, num_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def chunk_ranges(start: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    """Split [start, end) into consecutive pieces of at most ``max_frames`` (the last may be shorter)."""
    return [(a, min(a + max_frames, end)) for a in range(start, end, max_frames)]
