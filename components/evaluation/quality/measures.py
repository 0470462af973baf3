"""The quality ladder's measures, one contestant at a time, on the held-out set (definitions in
:data:`DEFINITIONS`; every number is a mean over the held-out clips or InterBench cases).

PSNR is capped at :data:`PSNR_CAP` (identical frames give +inf; JSON and means need a number), as
InterBench does. Camera numbers come from the curation camera estimator run on the frames, with the
held-out data's field of view; its own error is what the ``truth`` contestant scores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldloop.components.curation.camera_estimation import CameraEstimationConfig, estimate_camera
from worldloop.components.evaluation.judges.base import DIMENSIONS, CaseScores, Judge, aggregate
from worldloop.components.evaluation.metrics import camera_rpe, psnr, ssim
from worldloop.components.evaluation.metrics.camera_rpe import MIN_TRANSLATION
from worldloop.components.evaluation.quality.contestants import Contestant
from worldloop.components.evaluation.quality.heldout import DIRECTION_PAIRS, DirectionPair, HeldOutSet
from worldloop.components.evaluation.suite import InterBenchCase, LoadedSuite

PSNR_CAP = 100.0
MIN_YAW_DEG = 0.1  # a turn smaller than this (degrees) counts as "did not turn"
Metrics = dict[str, float | None]

DEFINITIONS: dict[str, str] = {
    "vae.psnr": "VAE encode→decode of each held-out clip vs the clip: PSNR (dB, MSE pooled over the clip's "
    "frames and pixels, RGB in [0, 1]), mean over clips; n/a for frozen and truth (no VAE).",
    "vae.ssim": "SSIM (11×11 Gaussian σ 1.5, valid region, RGB-averaged) of the VAE reconstruction, mean "
    "over frames, then over clips.",
    "rollout.psnr.block0": "Block 0 = frame 0 (the reference image as the model returns it, i.e. through "
    "its VAE) vs the true frame 0: PSNR dB, capped at 100 (= identical; shown as inf).",
    "rollout.psnr.blockN": "Generated block N (frames 1+(N-1)·p … N·p, p = frames per block), rolled out "
    "from the true first frame with the clip's own actions, vs the true frames: PSNR dB with the MSE pooled "
    "over the block; mean over clips.",
    "rollout.psnr.blocks_1_2": "Mean of the block-1 and block-2 PSNR (block 1 alone when --blocks 1).",
    "rollout.ssim.*": "The same blocks scored with SSIM (mean over the block's frames, then over clips).",
    "camera.rotation_deg": "Camera RPE of the same rollouts: for each frame pair (i, i+1), the angle of "
    "R_est^T R_cmd between the relative rotation of the camera estimated from the generated frames and of "
    "the commanded path; mean over pairs, then over clips (deg, lower is better).",
    "camera.translation_deg": "Angle between estimated and commanded relative translation directions, mean "
    "over the pairs where both moved, then over clips (deg; n/a when no pair qualified, e.g. frozen).",
    "camera.translation_missed": "Fraction of commanded translating pairs where the estimate did not move.",
    "camera.rotation_deg.blockN": "The rotation RPE of the frame pairs ending in generated block N, mean "
    "over clips: camera control along the rollout (with rollout.psnr.blockN, the drift of a long rollout).",
    "direction.<pair>": "From each clip's first frame, the first input held for the whole clip, then the "
    "second; passes when the estimator's end pose moves the right way under both: W +z / S -z (forward), "
    "A -x / D +x (lateral), mouse left -yaw / right +yaw. Fraction of clips that pass.",
    "direction.all": "Mean of the three pair fractions. Random directions score about 0.25, no motion 0.",
    "interbench.<dim>": "InterBench dimension (0-1, higher is better) by the SynthWorld judge on the "
    "held-out suite, mean over cases; always streamed with the serving rollout.",
}


@dataclass
class ContestantScores:
    """One contestant's numbers: ``metrics`` (flat, keyed as in :func:`metric_keys`), per-clip detail,
    its fidelity videos of the first clips (for side-by-side samples) and seconds per part."""

    name: str
    metrics: Metrics
    clips: list[dict[str, Any]]
    samples: list[np.ndarray] = field(repr=False)
    seconds: dict[str, float]


def metric_keys(blocks: int) -> list[str]:
    """Every metric key of a ladder with ``blocks`` generated blocks, in table order."""
    keys = ["vae.psnr", "vae.ssim"]
    for kind in ("psnr", "ssim"):
        keys += [f"rollout.{kind}.block{b}" for b in range(blocks + 1)] + [f"rollout.{kind}.blocks_1_2"]
    keys += ["camera.rotation_deg", "camera.translation_deg", "camera.translation_missed"]
    keys += [f"camera.rotation_deg.block{b}" for b in range(1, blocks + 1)]
    keys += [f"direction.{p.name}" for p in DIRECTION_PAIRS] + ["direction.all"]
    return keys + [f"interbench.{d.value}" for d in DIMENSIONS]


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values; None when there is none."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(known)) if known else None


def capped_psnr(video: np.ndarray, truth: np.ndarray) -> float:
    return min(psnr(video, truth), PSNR_CAP)


# -- fidelity ------------------------------------------------------------------------------------------
def block_slices(held: HeldOutSet) -> list[slice]:
    """Frame ranges of block 0 (frame 0) and of generated blocks 1 … B."""
    p = held.frames_per_block
    return [slice(0, 1), *(slice(1 + b * p, 1 + (b + 1) * p) for b in range(held.blocks))]


def fidelity(video: np.ndarray, truth: np.ndarray, held: HeldOutSet) -> dict[str, list[float]]:
    """Per-block PSNR (capped) and SSIM of ``video`` against ``truth``, block 0 first."""
    slices = block_slices(held)
    return {
        "psnr": [capped_psnr(video[s], truth[s]) for s in slices],
        "ssim": [ssim(video[s], truth[s]) for s in slices],
    }


# -- camera --------------------------------------------------------------------------------------------
def camera_error(
    video: np.ndarray, commanded: np.ndarray, fov_deg: float, *, frames_per_block: int
) -> dict[str, Any]:
    """Mean rotation and translation-direction RPE (deg) over the frame pairs, the fraction of
    commanded translating pairs whose estimate did not move, and the rotation RPE per generated block
    (the pairs ending in its frames: how camera control holds up along a long rollout).

    Means, not medians: SynthWorld's actions turn the camera in fewer than half of the frames, so a
    median would give a video that never turns (the frozen frame) the estimator's floor."""
    rpe = camera_rpe(video, commanded, camera=CameraEstimationConfig(fov_deg=fov_deg))
    rel = np.linalg.inv(commanded[:-1]) @ commanded[1:]
    moving = int((np.linalg.norm(rel[:, :3, 3], axis=1) >= MIN_TRANSLATION).sum())
    p = frames_per_block
    per_block = [
        float(rpe.rotation_deg[b * p : (b + 1) * p].mean()) for b in range(len(rpe.rotation_deg) // p)
    ]
    return {
        "rotation_deg": rpe.rotation_mean,
        "translation_deg": rpe.translation_mean if rpe.translation_deg.size else None,
        "translation_missed": rpe.num_missed_translations / moving if moving else None,
        "rotation_deg_blocks": per_block,
    }


def end_motion(video: np.ndarray, fov_deg: float) -> dict[str, float]:
    """The estimated end pose relative to frame 0: forward (z) and lateral (x, right +) translation in
    estimator units, and yaw (deg, right +)."""
    c2w = estimate_camera(video, CameraEstimationConfig(fov_deg=fov_deg)).c2w[-1]
    heading = c2w[:3, 2]  # the last camera's optical axis in frame-0 coordinates
    return {
        "forward": float(c2w[2, 3]),
        "lateral": float(c2w[0, 3]),
        "yaw": math.degrees(math.atan2(heading[0], heading[2])),
    }


def direction_passes(pair: DirectionPair, first: float, second: float) -> bool:
    """Both inputs moved the camera, each the right way along ``pair.axis``."""
    least = MIN_YAW_DEG if pair.axis == "yaw" else MIN_TRANSLATION
    return pair.sign * first >= least and -pair.sign * second >= least


# -- one contestant ------------------------------------------------------------------------------------
def measure(
    contestant: Contestant,
    held: HeldOutSet,
    *,
    fov_deg: float,
    seed: int,
    suite: LoadedSuite | None = None,
    cases: Sequence[InterBenchCase] = (),
    judge: Judge | None = None,
    with_fidelity: bool = True,
    num_samples: int = 2,
    on_video: Callable[[], None] | None = None,
) -> ContestantScores:
    """Every measure of ``contestant``: fidelity and camera error on each held-out clip's own actions,
    the three direction pairs from each clip's first frame, InterBench on ``cases`` with ``judge``.
    Sampling seeds: ``seed + clip index`` (InterBench: ``seed + case index``)."""
    tick = on_video or (lambda: None)
    seconds: dict[str, float] = {}
    clips: list[dict[str, Any]] = []
    samples: list[np.ndarray] = []
    started = time.perf_counter()
    for clip in held.clips:
        video = contestant.video(held, clip, clip.actions, seed=seed + clip.index)
        tick()
        row: dict[str, Any] = {"clip": clip.index, "seed": clip.seed}
        if with_fidelity:
            row |= fidelity(video, clip.frames, held)
            recon = contestant.reconstruct(clip.frames)
            if recon is not None:
                row["vae"] = {"psnr": capped_psnr(recon, clip.frames), "ssim": ssim(recon, clip.frames)}
        row["camera"] = camera_error(video, clip.c2w, fov_deg, frames_per_block=held.frames_per_block)
        if len(samples) < num_samples:
            samples.append(video)
        clips.append(row)
    seconds["fidelity_camera"] = time.perf_counter() - started

    started = time.perf_counter()
    for clip, row in zip(held.clips, clips, strict=True):
        row["direction"] = {}
        for pair in DIRECTION_PAIRS:
            values = []
            for which in (pair.first, pair.second):
                video = contestant.video(held, clip, pair.script(which, held.frames), seed=seed + clip.index)
                tick()
                values.append(end_motion(video, fov_deg)[pair.axis])
            row["direction"][pair.name] = {"values": values, "passed": direction_passes(pair, *values)}
    seconds["direction"] = time.perf_counter() - started

    started = time.perf_counter()
    judged: list[CaseScores] = []
    if suite is not None and judge is not None:
        for i, case in enumerate(cases):
            judged.append(judge.score(case, contestant.interbench_video(suite, case, seed=seed + i)))
            tick()
    seconds["interbench"] = time.perf_counter() - started
    metrics = summarize(
        clips, judged, blocks=held.blocks, with_fidelity=with_fidelity, with_interbench=bool(cases)
    )
    return ContestantScores(contestant.name, metrics, clips, samples, seconds)


def summarize(
    clips: list[dict[str, Any]],
    judged: list[CaseScores],
    *,
    blocks: int,
    with_fidelity: bool,
    with_interbench: bool,
) -> Metrics:
    """Per-clip rows → the flat metric dict (means over clips; None = n/a)."""
    out: Metrics = dict.fromkeys(metric_keys(blocks))
    if with_fidelity:
        for kind in ("psnr", "ssim"):
            for b in range(blocks + 1):
                out[f"rollout.{kind}.block{b}"] = mean([r[kind][b] for r in clips])
            out[f"rollout.{kind}.blocks_1_2"] = mean(
                [out[f"rollout.{kind}.block{b}"] for b in (1, 2) if b <= blocks]
            )
            out[f"vae.{kind}"] = mean([r["vae"][kind] for r in clips if "vae" in r])
    for key in ("rotation_deg", "translation_deg", "translation_missed"):
        out[f"camera.{key}"] = mean([r["camera"][key] for r in clips])
    for b in range(1, blocks + 1):
        out[f"camera.rotation_deg.block{b}"] = mean(
            [r["camera"]["rotation_deg_blocks"][b - 1] for r in clips]
        )
    for pair in DIRECTION_PAIRS:
        out[f"direction.{pair.name}"] = float(np.mean([r["direction"][pair.name]["passed"] for r in clips]))
    out["direction.all"] = mean([out[f"direction.{p.name}"] for p in DIRECTION_PAIRS])
    if with_interbench:
        out |= {f"interbench.{k}": v for k, v in aggregate(judged).items()}
    return out
