"""Interaction mining: find a state transition in a shot that the camera's own motion does not explain.

The paper defines an interaction as an action by a clear agent that triggers a state transition with
clear causality. From pixels alone we find the *transition*: an onset after which part of the frame
keeps changing beyond what optical flow predicts (a door sliding, a creature appearing, a bullet hole),
or a sustained brightness shift (night falling, a torch lit). Agent and action come from the caption
(:mod:`.captioning`), which only emits an interaction when text and pixels agree.
"""

from __future__ import annotations

import numpy as np

from worldloop.components.curation.captioning import InteractionCandidate
from worldloop.components.curation.config import InteractionConfig
from worldloop.components.curation.signals import PairSignals


def _bbox(mask: np.ndarray, scale_x: float, scale_y: float) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (
        int(xs.min() * scale_x),
        int(ys.min() * scale_y),
        int(np.ceil((xs.max() + 1) * scale_x)),
        int(np.ceil((ys.max() + 1) * scale_y)),
    )


def mine_interaction(
    signals: PairSignals, cfg: InteractionConfig, *, width: int, height: int
) -> InteractionCandidate | None:
    """The strongest persistent transition in the shot ``signals`` describes, or None."""
    n = signals.num_frames - 1
    if n < 2:
        return None
    changed = signals.residual_maps > cfg.pixel_threshold  # (F-1, S, S)
    active = changed.reshape(n, -1).mean(axis=1)
    excess = active - float(np.median(active))
    onset_pair: int | None = None
    for i in range(n):
        window = excess[i : i + cfg.window]
        if excess[i] >= cfg.min_area and int((window >= cfg.min_area / 2).sum()) >= cfg.min_persistence:
            onset_pair = i
            break
    luma = signals.luma
    quarter = max(1, len(luma) // 4)
    shift = float(luma[-quarter:].mean() - luma[:quarter].mean())
    sx, sy = width / signals.work_size, height / signals.work_size
    if onset_pair is not None:
        region = changed[onset_pair : onset_pair + cfg.window].any(axis=0)
        area = float(region.mean())
        is_global = area >= cfg.global_area
        return InteractionCandidate(
            onset_frame=onset_pair + 1,
            score=float(excess[onset_pair : onset_pair + cfg.window].max()),
            bbox=None if is_global else _bbox(np.asarray(region), sx, sy),
            global_change=is_global,
        )
    if abs(shift) >= cfg.min_luma_shift:
        # A gradual global change: onset where brightness has moved a quarter of the way.
        moved = np.abs(luma - luma[:quarter].mean()) >= abs(shift) / 4
        return InteractionCandidate(
            onset_frame=int(np.argmax(moved)), score=abs(shift), bbox=None, global_change=True
        )
    return None
