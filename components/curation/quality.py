"""Quality filters: each returns the reason a shot is quarantined, or None to keep it."""

from __future__ import annotations

from enum import Enum

import numpy as np

from worldloop.components.curation.config import QualityConfig
from worldloop.components.curation.signals import PairSignals


class Reason(str, Enum):
    """Why an input or a shot did not make it into the dataset."""

    unreadable = "unreadable"  # zero-byte, truncated, not a video container
    undecodable = "undecodable"  # container opens but yields no frames
    too_short = "too_short"
    too_dark = "too_dark"
    blurry = "blurry"
    static = "static"
    failed = "failed"  # an unexpected error while processing (message recorded)


def shot_stats(signals: PairSignals, start: int, end: int) -> dict[str, float]:
    """Numbers recorded with every clip and used by :func:`check_quality` ([start, end) frames)."""
    pairs = slice(start, max(start, end - 1))
    flow, residual = signals.flow[pairs], signals.residual[pairs]
    return {
        "luma": float(np.median(signals.luma[start:end])),
        "sharpness": float(np.median(signals.sharpness[start:end])),
        "motion_p90": float(np.percentile(flow, 90)) if len(flow) else 0.0,
        "change_p90": float(np.percentile(residual, 90)) if len(residual) else 0.0,
    }


def check_quality(stats: dict[str, float], frames: int, cfg: QualityConfig) -> tuple[Reason, str] | None:
    """(reason, detail) for a shot that fails a filter, or None when it passes them all."""
    if frames < cfg.min_frames:
        return Reason.too_short, f"{frames} frames < min_frames {cfg.min_frames}"
    if stats["luma"] < cfg.min_luma:
        return Reason.too_dark, f"median luma {stats['luma']:.4f} < {cfg.min_luma}"
    if stats["sharpness"] < cfg.min_sharpness:
        return Reason.blurry, f"median sharpness {stats['sharpness']:.2f} < {cfg.min_sharpness}"
    if stats["motion_p90"] < cfg.min_motion and stats["change_p90"] < cfg.min_change:
        return (
            Reason.static,
            f"motion p90 {stats['motion_p90']:.3f} px/frame < {cfg.min_motion} and "
            f"change p90 {stats['change_p90']:.4f} < {cfg.min_change}",
        )
    return None
