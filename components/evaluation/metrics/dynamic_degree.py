"""Dynamic degree: does the clip move at all? Optical-flow magnitude with VBench's rule.

VBench (Huang et al. 2024, "dynamic degree") scores each frame pair by the mean of its top-5 % RAFT flow
magnitudes and calls a video dynamic when enough pairs exceed 6 px at a 256 px shorter side. Here the
flow is OpenCV Farneback (:mod:`.optical_flow`, offline, no weights), magnitudes are divided by the image
diagonal so the threshold is resolution-free, and

* per pair: m = mean of the top 5 % of |flow| / diagonal;
* dynamic when at least max(1, round(4 · (P + 1) / 16)) of the P pairs — about a quarter, VBench's
  ``count_num`` — have m > 6 / (256 √2) ≈ 0.0166, VBench's threshold for a square frame.

Farneback under-estimates large motions that RAFT tracks, so rates are not comparable with published
VBench numbers. VBench also subsamples to ~8 fps first: pass ``stride`` (e.g. 2 for 16 fps) to match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from worldloop.components.evaluation.metrics.optical_flow import clip_flow

TOP_FRACTION = 0.05
DYNAMIC_THRESHOLD = 6.0 / (256.0 * math.sqrt(2.0))  # fraction of the image diagonal per pair


@dataclass(frozen=True)
class DynamicDegree:
    """``magnitude``: mean over pairs of m (fraction of the diagonal per pair, ≥ 0); ``per_pair`` (P,) m
    of each pair; ``dynamic``: VBench's rule; ``num_moving_pairs``/``required_pairs`` behind it. Neither
    direction is "better": a generator should be dynamic when the commanded camera or scene moves."""

    magnitude: float
    per_pair: np.ndarray
    dynamic: bool
    num_moving_pairs: int
    required_pairs: int


def dynamic_degree(video: np.ndarray, *, stride: int = 1) -> DynamicDegree:
    """Flow magnitude and VBench-style dynamic flag of ``video`` (T > stride, H, W ≥ 16, 3) uint8."""
    flow = clip_flow(video, stride=stride)
    magnitude = np.linalg.norm(flow.backward, axis=-1).reshape(len(flow.pairs), -1)  # (P, h·w)
    top = max(1, int(magnitude.shape[1] * TOP_FRACTION))
    per_pair = np.sort(magnitude, axis=1)[:, -top:].mean(axis=1) / flow.diagonal
    required = max(1, round(4 * (len(flow.pairs) + 1) / 16))
    moving = int((per_pair > DYNAMIC_THRESHOLD).sum())
    return DynamicDegree(
        magnitude=float(per_pair.mean()),
        per_pair=per_pair,
        dynamic=moving >= required,
        num_moving_pairs=moving,
        required_pairs=required,
    )
