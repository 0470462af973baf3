"""The offline SynthWorld judge: scores a generated video against the case's exact ground truth.

SynthWorld renders every case twice along the commanded camera path — with the event (``E``) and with
the event never triggered (``C``, the counterfactual) — and knows where the event shows (masks ``M``)
and how far it has progressed (``progress``). A model that follows the camera script and performs the
instruction should produce frames like ``E``; one that ignores the instruction, like ``C``. The judge
compares the generated frames ``V`` with both, inside the (dilated) event region, on lightly blurred
frames so that a pixel or two of misalignment does not decide anything:

    evidence(t) = (|V−C|_M − |V−E|_M) / max(|E−C|_M, min(|V−C|_M, |V−E|_M))
                  +1: looks like the event, −1: like no event, ~0: like neither (lost the scene)

Per case (frames from the instruction on; "after" = from the frame the end state is reached):

* **trigger** — 1 if the mean evidence after the end state is > 0.25 (``decision``), else 0.
* **alignment** — mean of max(evidence, 0) after the end state: 1 = the instructed change exactly,
  0 = no change or a video unlike the scene.
* **fluency** — 1 / (1 + flicker + jumps): flicker is the total variation of the evidence curve beyond
  its net change; jumps is how much larger the video's mean frame-to-frame change is than the truth's
  (up to the next turn's instruction in a multi-turn case).
* **scope** — local events: (inside / |E−C|_M, at most 1) × (1 − outside / inside), where inside and
  outside are the change |V − C| in and out of the region (no change at all is not a scoped change);
  global events (covering ≥ half the frame): the fraction of the region where |V−C| reaches half of
  |E−C| and V is nearer E than C. A change spilled over the whole frame scores ~0 on a local event.
* **end_state** — the fraction of frames after the end state with evidence > ``decision``.
* **physics** (a proxy) — 1 − mean |m(t) − g(t)| from the instruction on, where g(t) = |E−C|_M(t) and
  m(t) = |V−C|_M(t), both divided by g at the end state: the change should grow as the staged event
  does (no popping in, no overshoot, no fading back). It does not check object dynamics beyond that.

Multi-turn cases: each turn k is judged as above over its own frames — from its instruction to the
next turn's — against ``E_k`` (the shot with turns 1 … k) and ``C_k`` (turns 1 … k−1 only: had turn k never
been asked), inside turn k's region; the case's six scores are the means over its turns. **Persistence**
of turn k (every turn but the last): over the frames from turn k+1's instruction to the end, inside turn
k's region, is the state turn k produced still there? Whether or not the model applied the later turns,
its frames are compared with the pair of renders that matches what it did — with the later turns, ``E``
against ``X_k`` (every turn but k: turn k's state gone, the later ones there); without them, ``E_k``
against ``C_k`` — whichever pair is nearer; the evidence is as above, and the score is the fraction of
judged frames above ``decision``. Comparing with ``C_k`` alone would pass a video whose door closed
again while night fell: in the door region, night moves it away from ``C_k`` as much as an open door.

How far to trust it: :func:`judge_accuracy` measures how often the per-frame decision
"evidence > decision ⇔ the event is shown" is right on unseen SynthWorld clips whose frames are degraded
the way generated frames are (noise, blur, a pixel of shift, brightness change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from worldloop.components.evaluation.judges.base import CaseScores, Dimension, TurnScores
from worldloop.components.evaluation.suite import CaseTruth, InterBenchCase, LoadedSuite, TurnTruth

TRUSTED_ACCURACY = 0.95


@dataclass(frozen=True)
class SynthWorldJudgeConfig:
    # Chosen on a suite of seed 0 (per-frame accuracy 1.0 there), then measured on other seeds.
    blur_sigma_px: float = 2.0  # at 64 px; scaled with the frame size
    dilate_px: int = 4  # event region grown by this (at 64 px) to absorb small misalignments
    min_gap: float = 0.02  # frames whose E−C difference in the region is below this are not judged
    decision: float = 0.25  # evidence above this = "the event is shown" (0 = equally like E and C)


class SynthWorldJudge:
    """Scores videos of a SynthWorld suite's cases (it needs the suite's ``truth/``)."""

    name = "synthworld"

    def __init__(self, suite: LoadedSuite, cfg: SynthWorldJudgeConfig | None = None) -> None:
        self.suite, self.cfg = suite, cfg or SynthWorldJudgeConfig()

    def score(self, case: InterBenchCase, video: np.ndarray) -> CaseScores:
        return score_against_truth(case, video, self.suite.truth(case.id), self.cfg)


# -- the per-frame measurements ------------------------------------------------------------------------
def _prepare(frames: np.ndarray, sigma: float) -> np.ndarray:
    x = frames.astype(np.float32) / 255.0
    if sigma <= 0:
        return x
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in x])


def _regions(masks: np.ndarray, dilate: int) -> np.ndarray:
    if dilate <= 0:
        return masks.astype(bool)
    kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])


def _region_mean(diff: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per frame mean of ``diff`` (F, H, W) over ``region`` (F, H, W) bool; NaN where it is empty."""
    area = region.sum(axis=(1, 2))
    total = (diff * region).sum(axis=(1, 2))
    return np.where(area > 0, total / np.maximum(area, 1), np.nan)


class Shown(Protocol):
    """What a judged change is measured against: a :class:`CaseTruth` or one turn's :class:`TurnTruth`."""

    @property
    def event(self) -> np.ndarray: ...  # (F, H, W, 3) uint8: the shot with the change
    @property
    def counterfactual(self) -> np.ndarray: ...  # (F, H, W, 3) uint8: the same shot without it
    @property
    def masks(self) -> np.ndarray: ...  # (F, H, W) bool: where it shows


@dataclass(frozen=True)
class Evidence:
    evidence: np.ndarray  # (F,) NaN where not judged
    inside: np.ndarray  # (F,) |V−C| in the region
    outside: np.ndarray  # (F,) |V−C| outside it
    gap: np.ndarray  # (F,) |E−C| in the region
    coverage: np.ndarray  # (F,) fraction of the region where |V−C| ≥ ½|E−C|
    motion_video: np.ndarray  # (F,) mean |V_t − V_{t−1}| (NaN at t = 0)
    motion_truth: np.ndarray  # (F,) mean |E_t − E_{t−1}| (NaN at t = 0)


def _scales(video: np.ndarray, cfg: SynthWorldJudgeConfig) -> tuple[float, int]:
    """Blur sigma and dilation in pixels at this frame size (the config's are at 64 px)."""
    scale = video.shape[1] / 64
    return cfg.blur_sigma_px * scale, max(1, round(cfg.dilate_px * scale))


def _evidence(
    near_shown: np.ndarray, near_not: np.ndarray, gap: np.ndarray, cfg: SynthWorldJudgeConfig
) -> np.ndarray:
    """(F,) +1 where the video is the render with the change, −1 the render without it, NaN where the two
    renders differ by less than ``min_gap`` (``near_*``: the video's distances to them, ``gap``: theirs)."""
    judged = np.nan_to_num(gap) >= cfg.min_gap
    # Divided by the larger of |E−C| and the distance to the nearer reference: a video far from both
    # (it lost the scene) gets evidence near 0 however its noise happens to fall.
    scale = np.maximum(gap, np.minimum(near_shown, near_not))
    return np.where(judged, (near_not - near_shown) / np.where(judged, scale, 1.0), np.nan)


def _motion(x: np.ndarray) -> np.ndarray:
    """(F,) mean absolute change from the previous frame; NaN for frame 0."""
    return np.concatenate([[np.nan], np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))])


def measure(video: np.ndarray, truth: Shown, cfg: SynthWorldJudgeConfig) -> Evidence:
    if video.shape != truth.event.shape:
        raise ValueError(
            f"video {video.shape} does not match the case's ground truth {truth.event.shape} "
            "(frames, height, width, channels)"
        )
    sigma, dilate = _scales(video, cfg)
    v, e, c = (_prepare(x, sigma) for x in (video, truth.event, truth.counterfactual))
    region = _regions(truth.masks, dilate)
    d_vc, d_ve, d_ec = (np.abs(a - b).mean(axis=-1) for a, b in ((v, c), (v, e), (e, c)))
    inside, gap = _region_mean(d_vc, region), _region_mean(d_ec, region)
    evidence = _evidence(_region_mean(d_ve, region), inside, gap, cfg)
    # Toward the event, not just away from the counterfactual: in a multi-turn case a video without any
    # turn differs from turn 2's counterfactual where turn 1 acted, which is no part of turn 2's change.
    reached = (d_vc >= 0.5 * d_ec) & (d_ve < d_vc) & (d_ec > cfg.min_gap / 2) & region
    coverage = reached.sum(axis=(1, 2)) / np.maximum((region & (d_ec > cfg.min_gap / 2)).sum(axis=(1, 2)), 1)
    return Evidence(
        evidence=np.clip(evidence, -1.0, 1.0),
        inside=inside,
        outside=_region_mean(d_vc, ~region),
        gap=gap,
        coverage=coverage,
        motion_video=_motion(v),
        motion_truth=_motion(e),
    )


def score_against_truth(
    case: InterBenchCase, video: np.ndarray, truth: CaseTruth, cfg: SynthWorldJudgeConfig | None = None
) -> CaseScores:
    cfg = cfg or SynthWorldJudgeConfig()
    if not case.multi_turn:
        start, stop = case.windows()[0]
        scores, notes = score_window(measure(video, truth, cfg), truth, start, stop, cfg)
        return CaseScores(case=case.id, category=case.category.value, scores=scores, notes=notes)
    if len(truth.turns) != len(case.turns):
        raise ValueError(
            f"case {case.id} has {len(case.turns)} turns and its ground truth {len(truth.turns)}: "
            "rebuild the suite"
        )
    judged: list[tuple[TurnScores, list[str]]] = []
    for k, (turn, (start, stop)) in enumerate(zip(truth.turns, case.windows(), strict=True)):
        scores, said = score_window(measure(video, turn, cfg), turn, start, stop, cfg)
        kept = None if turn.without is None else persistence(video, truth, k, start=stop, cfg=cfg)
        if turn.without is not None and kept is None:
            said.append("its state is not visible enough after the next turn to judge persistence")
        judged.append((TurnScores(scores=scores, persistence=kept), said))
    return CaseScores.of_turns(case.id, case.category.value, judged)


def score_window(
    m: Evidence, truth: CaseTruth | TurnTruth, start: int, stop: int, cfg: SynthWorldJudgeConfig
) -> tuple[dict[Dimension, float | None], list[str]]:
    """The six scores of one change over frames [start, stop): from its instruction to the next
    instruction (a multi-turn case's turn) or to the end."""
    notes: list[str] = []
    after = np.arange(max(truth.full, start), stop)
    if len(after) < 2:  # the end state lands at the very end: use the last quarter after the instruction
        after = np.arange(max(start, stop - max(2, (stop - start) // 4)), stop)
    judged_after = after[~np.isnan(m.evidence[after])]
    scores: dict[Dimension, float | None] = dict.fromkeys(Dimension)
    if len(judged_after) == 0:
        notes.append("the event is not visible enough in the ground truth to judge (region too small)")
        return scores, notes

    ev_after = m.evidence[judged_after]
    scores[Dimension.trigger] = float(ev_after.mean() > cfg.decision)
    scores[Dimension.alignment] = float(np.clip(ev_after, 0.0, 1.0).mean())
    scores[Dimension.end_state] = float((ev_after > cfg.decision).mean())

    curve = m.evidence[start:stop]
    curve = curve[~np.isnan(curve)]
    flicker = float(np.abs(np.diff(curve)).sum() - abs(curve[-1] - curve[0])) if len(curve) > 1 else 0.0
    # Over the video up to ``stop``: past it a multi-turn truth shows the next turn and this turn's does not.
    motion_video, motion_truth = np.nanmean(m.motion_video[:stop]), np.nanmean(m.motion_truth[:stop])
    jumps = max(0.0, float(motion_video / max(motion_truth, 1e-6)) - 1.0)
    scores[Dimension.fluency] = 1.0 / (1.0 + flicker + jumps)

    if truth.global_event:
        scores[Dimension.scope] = float(np.clip(m.coverage[judged_after].mean(), 0.0, 1.0))
    else:
        inside = float(np.nanmean(m.inside[judged_after]))
        outside = float(np.nanmean(m.outside[judged_after]))
        gap = float(np.nanmean(m.gap[judged_after]))
        # No change at all is not a well-scoped change: weigh by how much of the true change happened.
        happened = float(np.clip(inside / max(gap, 1e-6), 0.0, 1.0))
        scores[Dimension.scope] = happened * float(np.clip(1.0 - outside / max(inside, 1e-6), 0.0, 1.0))

    g_end = float(np.nanmean(m.gap[judged_after]))
    span = np.arange(start, stop)
    g = np.nan_to_num(m.gap[span]) / g_end
    mv = np.nan_to_num(m.inside[span]) / g_end
    scores[Dimension.physics] = float(np.clip(1.0 - np.abs(mv - g).mean(), 0.0, 1.0))
    return scores, notes


def persistence_evidence(
    video: np.ndarray, truth: CaseTruth, turn: int, cfg: SynthWorldJudgeConfig
) -> np.ndarray:
    """(F,) evidence, inside turn ``turn``'s (0-based) region, that its state is still shown: +1 like the
    renders with it, −1 like those without; NaN where the matched pair of renders is too close to tell
    (module docstring). Meaningful from the next turn's instruction on."""
    k = truth.turns[turn]
    if k.without is None:
        raise ValueError(f"turn {turn + 1} is the last: no later turn for its state to outlast")
    if video.shape != truth.event.shape:
        raise ValueError(f"video {video.shape} does not match the case's ground truth {truth.event.shape}")
    sigma, dilate = _scales(video, cfg)
    region = _regions(k.masks, dilate)
    v = _prepare(video, sigma)
    later, without, alone, before = (
        _prepare(x, sigma) for x in (truth.event, k.without, k.event, k.counterfactual)
    )

    def near(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _region_mean(np.abs(a - b).mean(axis=-1), region)

    # With the later turns applied (E vs X_k) or without them (E_k vs C_k): the pair nearer the video.
    applied = _evidence(near(v, later), near(v, without), near(later, without), cfg)
    not_applied = _evidence(near(v, alone), near(v, before), near(alone, before), cfg)
    nearer_applied = np.fmin(near(v, later), near(v, without)) <= np.fmin(near(v, alone), near(v, before))
    return np.clip(np.where(nearer_applied, applied, not_applied), -1.0, 1.0)


def persistence(
    video: np.ndarray, truth: CaseTruth, turn: int, *, start: int, cfg: SynthWorldJudgeConfig
) -> float | None:
    """Fraction of the judged frames from ``start`` (the next turn's instruction) on where turn ``turn``'s
    state is still shown; None when no frame can be judged."""
    ev = persistence_evidence(video, truth, turn, cfg)[start:]
    ev = ev[~np.isnan(ev)]
    return float((ev > cfg.decision).mean()) if len(ev) else None


def judgeable(
    case: InterBenchCase, truth: CaseTruth, cfg: SynthWorldJudgeConfig | None = None, *, share: float = 0.75
) -> bool:
    """Whether the judge can see every change of ``case`` in its ground truth: for each turn, ``share`` of
    the frames from its end state to the next turn's instruction, and of the frames its state must
    persist over, differ enough between the renders compared there (``min_gap``)."""
    cfg = cfg or SynthWorldJudgeConfig()
    if not case.multi_turn:
        return _seen(measure(truth.event, truth, cfg).evidence[truth.full :], share)
    for k, (turn, (_, stop)) in enumerate(zip(truth.turns, case.windows(), strict=True)):
        if not _seen(measure(turn.event, turn, cfg).evidence[min(turn.full, stop - 1) : stop], share):
            return False
        if turn.without is not None and not _seen(
            persistence_evidence(truth.event, truth, k, cfg)[stop:], share
        ):
            return False
    return True


def _seen(evidence: np.ndarray, share: float) -> bool:
    return len(evidence) > 0 and float(np.isfinite(evidence).mean()) >= share


# -- how far to trust it -------------------------------------------------------------------------------
def degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What generated frames look like next to renders: noise, blur, a pixel of shift, brightness."""
    x = frames.astype(np.float32) / 255.0
    sigma = rng.uniform(0.3, 1.0)
    x = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in x])
    dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
    x = np.roll(x, (dy, dx), axis=(1, 2))
    x = x * rng.uniform(0.95, 1.05) + rng.normal(0.0, 0.02, size=x.shape).astype(np.float32)
    return (np.clip(x, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class JudgeAccuracy:
    accuracy: float
    decisions: int
    per_kind: dict[str, float]
    trusted: bool


def judge_accuracy(
    suite: LoadedSuite, *, seed: int = 0, cfg: SynthWorldJudgeConfig | None = None
) -> JudgeAccuracy:
    """Per-frame decision accuracy on degraded ground truth: frames after the end state of the event
    video must read as the event (evidence > decision) and those of the counterfactual must not. In a
    multi-turn case, so must each turn's over its own frames, and, for persistence (``per_kind``
    "persistence"), the renders with an earlier turn's state must read as keeping it after the next
    turn and those without it must not.

    Run it on a suite built with a seed no case of the evaluated suite uses (the judge has no fitted
    parameters, so held-out means unseen worlds, shots and events)."""
    cfg = cfg or SynthWorldJudgeConfig()
    rng = np.random.default_rng(seed)
    right: dict[str, list[bool]] = {}

    def tally(key: str, shown: bool, evidence: np.ndarray) -> None:
        evidence = evidence[~np.isnan(evidence)]
        right.setdefault(key, []).extend(((evidence > cfg.decision) == shown).tolist())

    for case in suite.cases:
        if not suite.has_truth(case.id):
            continue
        truth = suite.truth(case.id)
        if not case.multi_turn:
            for shown, frames in ((True, truth.event), (False, truth.counterfactual)):
                tally(case.label(), shown, measure(degrade(frames, rng), truth, cfg).evidence[truth.full :])
            continue
        for k, (turn, spec, (_, stop)) in enumerate(
            zip(truth.turns, case.turns, case.windows(), strict=True)
        ):
            for shown, frames in ((True, turn.event), (False, turn.counterfactual)):
                evidence = measure(degrade(frames, rng), turn, cfg).evidence[turn.full : stop]
                tally(spec.kind or spec.category.value, shown, evidence)
            if turn.without is None:
                continue
            # Kept with the later turns (E), kept without them (E_k), gone (X_k, C_k).
            for shown, frames in ((True, truth.event), (True, turn.event), (False, turn.without),
                                  (False, turn.counterfactual)):  # fmt: skip
                tally("persistence", shown, persistence_evidence(degrade(frames, rng), truth, k, cfg)[stop:])
    every = [r for rs in right.values() for r in rs]
    if not every:
        raise ValueError("the suite has no ground truth to measure the judge on")
    accuracy = float(np.mean(every))
    return JudgeAccuracy(
        accuracy=accuracy,
        decisions=len(every),
        per_kind={k: float(np.mean(v)) for k, v in sorted(right.items()) if v},
        trusted=accuracy >= TRUSTED_ACCURACY,
    )
