"""Temporal consistency: how much of each frame is *not* explained by moving the previous one.

Per consecutive pair, the previous frame is warped onto the next along the backward Farneback flow
(:mod:`.optical_flow`), both lightly blurred (Gaussian σ = 1 working px, so resampling and compression
noise do not count), and the mean absolute luma residual r ∈ [0, 1] is taken over the pixels whose
source lies inside the frame. The pair's score is 1 − r, as VBench's temporal-flickering score
(255 − MAE) / 255, but motion-compensated so a camera pan is not punished; the clip's score is the mean.

Range [0, 1], higher is better (1: every frame is the previous one moved). It catches flicker, popping
and texture boiling; it does **not** check identity or semantics (VBench's subject/background
consistency use DINO/CLIP features) and a frozen video scores a perfect 1 — read it with the dynamic
degree.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from worldloop.components.evaluation.metrics.optical_flow import clip_flow

BLUR_SIGMA = 1.0  # working px


@dataclass(frozen=True)
class TemporalConsistency:
    """``score`` in [0, 1] (higher better): mean of ``per_pair`` (T − 1,) = 1 − residual of each pair."""

    score: float
    per_pair: np.ndarray


def temporal_consistency(video: np.ndarray) -> TemporalConsistency:
    """Motion-compensated consecutive-frame consistency of ``video`` (T ≥ 2, H, W ≥ 16, 3) uint8."""
    flow = clip_flow(video, stride=1)
    grey = np.stack([cv2.GaussianBlur(g.astype(np.float32) / 255.0, (0, 0), BLUR_SIGMA) for g in flow.grey])
    h, w = grey.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    scores = np.zeros(len(flow.pairs))
    for k, i in enumerate(flow.pairs):
        map_x, map_y = xs + flow.backward[k, ..., 0], ys + flow.backward[k, ..., 1]
        warped = cv2.remap(grey[i], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        residual = np.abs(warped - grey[i + 1])[inside]
        scores[k] = 1.0 - float(residual.mean()) if residual.size else 0.0
    return TemporalConsistency(score=float(scores.mean()), per_pair=scores)
