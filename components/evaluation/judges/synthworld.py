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
  its net change; jumps is how much larger the video's mean frame-to-frame change is than the truth's.
* **scope** — local events: (inside / |E−C|_M, at most 1) × (1 − outside / inside), where inside and
  outside are the change |V − C| in and out of the region (no change at all is not a scoped change);
  global events (covering ≥ half the frame): the fraction of the region where |V−C| reaches half of
  |E−C|. A change spilled over the whole frame scores ~0 on a local event.
* **end_state** — the fraction of frames after the end state with evidence > ``decision``.
* **physics** (a proxy) — 1 − mean |m(t) − g(t)| from the instruction on, where g(t) = |E−C|_M(t) and
  m(t) = |V−C|_M(t), both divided by g at the end state: the change should grow as the staged event
  does (no popping in, no overshoot, no fading back). It does not check object dynamics beyond that.

How far to trust it: :func:`judge_accuracy` measures how often the per-frame decision
"evidence > decision ⇔ the event is shown" is right on unseen SynthWorld clips whose frames are degraded
the way generated frames are (noise, blur, a pixel of shift, brightness change).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from worldloop.components.evaluation.judges.base import CaseScores, Dimension
from worldloop.components.evaluation.suite import CaseTruth, InterBenchCase, LoadedSuite

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


@dataclass(frozen=True)
class Evidence:
    evidence: np.ndarray  # (F,) NaN where not judged
    inside: np.ndarray  # (F,) |V−C| in the region
    outside: np.ndarray  # (F,) |V−C| outside it
    gap: np.ndarray  # (F,) |E−C| in the region
    coverage: np.ndarray  # (F,) fraction of the region where |V−C| ≥ ½|E−C|
    motion_video: float  # mean |V_t − V_{t−1}|
    motion_truth: float  # mean |E_t − E_{t−1}|


def measure(video: np.ndarray, truth: CaseTruth, cfg: SynthWorldJudgeConfig) -> Evidence:
    if video.shape != truth.event.shape:
        raise ValueError(
            f"video {video.shape} does not match the case's ground truth {truth.event.shape} "
            "(frames, height, width, channels)"
        )
    scale = video.shape[1] / 64
    sigma, dilate = cfg.blur_sigma_px * scale, max(1, round(cfg.dilate_px * scale))
    v, e, c = (_prepare(x, sigma) for x in (video, truth.event, truth.counterfactual))
    region = _regions(truth.masks, dilate)
    d_vc, d_ve, d_ec = (np.abs(a - b).mean(axis=-1) for a, b in ((v, c), (v, e), (e, c)))
    inside, gap = _region_mean(d_vc, region), _region_mean(d_ec, region)
    near_event = _region_mean(d_ve, region)
    judged = np.nan_to_num(gap) >= cfg.min_gap
    # Divided by the larger of |E−C| and the distance to the nearer reference: a video far from both
    # (it lost the scene) gets evidence near 0 however its noise happens to fall.
    scale = np.maximum(gap, np.minimum(inside, near_event))
    evidence = np.where(judged, (inside - near_event) / np.where(judged, scale, 1.0), np.nan)
    reached = (d_vc >= 0.5 * d_ec) & (d_ec > cfg.min_gap / 2) & region
    coverage = reached.sum(axis=(1, 2)) / np.maximum((region & (d_ec > cfg.min_gap / 2)).sum(axis=(1, 2)), 1)
    return Evidence(
        evidence=np.clip(evidence, -1.0, 1.0),
        inside=inside,
        outside=_region_mean(d_vc, ~region),
        gap=gap,
        coverage=coverage,
        motion_video=float(np.abs(np.diff(v, axis=0)).mean()),
        motion_truth=float(np.abs(np.diff(e, axis=0)).mean()),
    )


def score_against_truth(
    case: InterBenchCase, video: np.ndarray, truth: CaseTruth, cfg: SynthWorldJudgeConfig | None = None
) -> CaseScores:
    cfg = cfg or SynthWorldJudgeConfig()
    m = measure(video, truth, cfg)
    notes: list[str] = []
    frames = len(video)
    start = case.instruction_frame
    after = np.arange(max(truth.full, start), frames)
    if len(after) < 2:  # the end state lands at the very end: use the last quarter after the instruction
        after = np.arange(max(start, frames - max(2, (frames - start) // 4)), frames)
    judged_after = after[~np.isnan(m.evidence[after])]
    scores: dict[Dimension, float | None] = dict.fromkeys(Dimension)
    if len(judged_after) == 0:
        notes.append("the event is not visible enough in the ground truth to judge (region too small)")
        return CaseScores(case=case.id, category=case.category.value, scores=scores, notes=notes)

    ev_after = m.evidence[judged_after]
    scores[Dimension.trigger] = float(ev_after.mean() > cfg.decision)
    scores[Dimension.alignment] = float(np.clip(ev_after, 0.0, 1.0).mean())
    scores[Dimension.end_state] = float((ev_after > cfg.decision).mean())

    curve = m.evidence[start:]
    curve = curve[~np.isnan(curve)]
    flicker = float(np.abs(np.diff(curve)).sum() - abs(curve[-1] - curve[0])) if len(curve) > 1 else 0.0
    jumps = max(0.0, m.motion_video / max(m.motion_truth, 1e-6) - 1.0)
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
    span = np.arange(start, frames)
    g = np.nan_to_num(m.gap[span]) / g_end
    mv = np.nan_to_num(m.inside[span]) / g_end
    scores[Dimension.physics] = float(np.clip(1.0 - np.abs(mv - g).mean(), 0.0, 1.0))
    return CaseScores(case=case.id, category=case.category.value, scores=scores, notes=notes)


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
    video must read as the event (evidence > decision) and those of the counterfactual must not.

    Run it on a suite built with a seed no case of the evaluated suite uses (the judge has no fitted
    parameters, so held-out means unseen worlds, shots and events)."""
    cfg = cfg or SynthWorldJudgeConfig()
    rng = np.random.default_rng(seed)
    right: dict[str, list[bool]] = {}
    for case in suite.cases:
        if not suite.has_truth(case.id):
            continue
        truth = suite.truth(case.id)
        kind = case.kind or case.category.value
        for shown, frames in ((True, truth.event), (False, truth.counterfactual)):
            m = measure(degrade(frames, rng), truth, cfg)
            ev = m.evidence[truth.full :]
            ev = ev[~np.isnan(ev)]
            right.setdefault(kind, []).extend(((ev > cfg.decision) == shown).tolist())
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
