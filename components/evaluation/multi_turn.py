"""Multi-turn InterBench cases staged in SynthWorld: which events follow which, how far apart the turns
must be, and the renders each turn is judged against.

A player issues several instructions in one stream — "open the door", later "make it night" — and the
model must apply each one at its block and keep what the earlier ones did (paper, "Multi-round
Interactive Inference": a new interactive prompt recaches once and the stream goes on). SynthWorld stages
such clips as a first event followed by events that need nothing placed in view
(:data:`~worldloop.components.synthworld.events.FOLLOW_UPS`), each starting once the previous completes.

Every turn gets its own block: a block takes one instruction (one recache), so two turns closer than a
block apart could not both be issued. The suite therefore keeps consecutive turns at least
:func:`min_turn_gap` frames apart — the largest block of the model presets — so that every preset can
stream every case.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np

from worldloop.components.synthworld import Clip, EventKind, SynthConfig, generate_clip
from worldloop.components.synthworld.clip import render_turns, render_without_turn
from worldloop.components.synthworld.events import FOLLOW_UPS, compatible

log = logging.getLogger(__name__)

TURN_ATTEMPTS = 16  # shots tried per case before it falls back to a single turn


@dataclass(frozen=True)
class TurnPlan:
    """The kinds of a multi-turn case, in order: a first event and the turns that follow it."""

    first: EventKind
    followups: tuple[EventKind, ...]

    def __post_init__(self) -> None:
        chosen: tuple[EventKind, ...] = (self.first,)
        for kind in self.followups:
            if kind not in FOLLOW_UPS or not compatible(chosen, kind):
                raise ValueError(f"{kind.value} cannot follow {[k.value for k in chosen]} in one clip")
            chosen += (kind,)

    @property
    def kinds(self) -> tuple[EventKind, ...]:
        return (self.first, *self.followups)


# First events short enough to leave room for a follow-up in a 33-frame clip; a three-turn plan is staged
# in a longer clip where the suite's length leaves no room for its third turn (:func:`stagings`). No shot
# first: at 64 px its bullet hole is too small to judge once the weather changes around it.
PLANS: tuple[TurnPlan, ...] = (
    TurnPlan(EventKind.open_door, (EventKind.night,)),
    TurnPlan(EventKind.explosion, (EventKind.draw_torch,)),
    TurnPlan(EventKind.dragon, (EventKind.night,)),
    TurnPlan(EventKind.vehicle, (EventKind.rain,)),
    TurnPlan(EventKind.open_door, (EventKind.draw_torch, EventKind.rain)),
    TurnPlan(EventKind.draw_torch, (EventKind.snow,)),
    TurnPlan(EventKind.person, (EventKind.rain,)),
    TurnPlan(EventKind.rain, (EventKind.draw_torch,)),
    TurnPlan(EventKind.explosion, (EventKind.night,)),
    TurnPlan(EventKind.dragon, (EventKind.draw_torch, EventKind.snow)),
)


@cache
def min_turn_gap() -> int:
    """Frames between consecutive turns so that each lands in a block of its own on every preset."""
    from worldloop.model.config import PRESETS

    return max(p().causal.block_frames * p().vae.temporal_stride for p in PRESETS.values())


def turn_seed(seed: int, case: int, attempt: int) -> int:
    """The SynthWorld seed of a multi-turn case's ``attempt``-th shot (32-bit, independent of the
    single-turn cases' ``seed·1_000_003 + case``)."""
    return int(np.random.SeedSequence([seed, case, attempt]).generate_state(1)[0])


def fits(clip: Clip, *, turns: int, gap: int) -> bool:
    """All ``turns`` events were staged and each starts ``gap`` frames or more after the one before."""
    onsets = [max(1, e.onset) for e in clip.events]
    return len(onsets) == turns and all(b - a >= gap for a, b in zip(onsets, onsets[1:], strict=False))


def stagings(frames: int, turns: int, gap: int) -> list[tuple[int, int]]:
    """(clip length, turns) to stage a plan of ``turns`` kinds at, in order: every turn at ``frames``
    where the first onset (never before ``frames // 4``) leaves room for the others ``gap`` apart, else
    at the shortest longer clip (1 + 4k frames) that does and one a gap longer still; then fewer turns,
    two at least, at ``frames``."""

    def room(length: int, n: int) -> bool:
        return max(1, length // 4) + (n - 1) * gap <= length - 2

    out: list[tuple[int, int]] = []
    if room(frames, turns):
        out.append((frames, turns))
    else:
        length = frames + (-(frames - 1)) % 4  # the next 1 + 4k at or above frames
        while not room(length, turns):
            length += 4
        out += [(length, turns), (length + gap + (-gap) % 4, turns)]
    out += [(frames, n) for n in range(turns - 1, 1, -1) if room(frames, n)]
    return out


def candidates(
    cfg: SynthConfig, plan: TurnPlan, *, seed: int, case: int, gap: int, turns: int
) -> Iterator[Clip]:
    """Clips of ``plan``'s first ``turns`` kinds, ``cfg.frames`` long, whose turns all fit ``gap``
    apart, from :data:`TURN_ATTEMPTS` shots. Deterministic in its arguments."""
    for attempt in range(TURN_ATTEMPTS):
        try:
            clip = generate_clip(
                cfg, turn_seed(seed, case, attempt), kind=plan.first, followups=plan.followups[: turns - 1]
            )
        except RuntimeError as why:  # SynthWorld found no shot for this seed: the next attempt
            log.debug("multi-turn case %d attempt %d: %s", case, attempt, why)
            continue
        if fits(clip, turns=turns, gap=gap):
            yield clip


def global_change(masks: np.ndarray, full: int, area: float) -> bool:
    """Whether an event covers at least ``area`` of the frame once complete (weather, night) — by what
    it touches, not by category: an explosion is an environment event but a local one."""
    return bool(masks[full:].mean() >= area)


def turn_truth(clip: Clip, cfg: SynthConfig, *, area: float) -> dict[str, np.ndarray]:
    """The per-turn ground truth of a multi-turn clip, as the arrays ``truth/<case>.npz`` stores.

    ``turn_masks`` (T, F, H, W), ``turn_progress`` (T, F), ``turn_full`` (T,), ``turn_global`` (T,);
    ``turn_renders`` (T−1, F, H, W, 3): the shot with the first k turns, k = 1 … T−1 (k = 0 is the
    counterfactual, k = T the event video); ``turn_without`` (T−1, F, H, W, 3): the shot without turn k,
    k = 1 … T−1 (the last turn has no later turn to outlast)."""
    frames, events = cfg.frames, clip.events
    full = [min(e.full, frames - 1) for e in events]
    return {
        "turn_masks": np.stack(clip.event_masks),
        "turn_progress": np.array([[e.progress(f) for f in range(frames)] for e in events], np.float32),
        "turn_full": np.array(full, np.int64),
        "turn_global": np.array(
            [global_change(m, f, area) for m, f in zip(clip.event_masks, full, strict=True)], np.bool_
        ),
        "turn_renders": np.stack([render_turns(clip, cfg, k) for k in range(1, len(events))]),
        "turn_without": np.stack([render_without_turn(clip, cfg, k) for k in range(len(events) - 1)]),
    }
