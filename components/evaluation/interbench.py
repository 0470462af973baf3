"""Run InterBench on a model: generate every case with the serving rollout, judge it, measure it.

For each case the model starts from the reference image and prompt, follows the case's action script
block by block, and receives the instruction with the block that contains ``instruction_frame`` (an
instruction change triggers exactly one recache, as in serving) — in a multi-turn case, each turn's
instruction with the block holding its frame. The video is judged on the six
InterBench dimensions and measured with the general metrics; everything lands in ``out``::

    scores.json      model, suite, judge (and its held-out accuracy), per-dimension and per-category
                     means, general metrics, and every case's numbers
    radar.png        the six dimensions as a radar chart
    report.html      the chart, the tables and links to the videos (self-contained but for the videos)
    videos/<case>.mp4
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldloop.components.evaluation.judges.base import (
    DIMENSIONS,
    CaseScores,
    Judge,
    aggregate,
    aggregate_turns,
)
from worldloop.components.evaluation.judges.synthworld import SynthWorldJudge, judge_accuracy
from worldloop.components.evaluation.metrics import (
    I3DFeatures,
    StatsFeatures,
    camera_rpe,
    dynamic_degree,
    fvd,
    image_quality,
    psnr,
    ssim,
    temporal_consistency,
)
from worldloop.components.evaluation.suite import (
    SUITE_TAG,
    InterBenchCase,
    LoadedSuite,
    build_synthworld_suite,
    load_suite,
)
from worldloop.model.camera.plucker import actions_to_camera
from worldloop.model.rollout import StreamState
from worldloop.platform.stack import ModelStack, load_model_stack
from worldloop.platform.tracking import EVALUATION, step_run
from worldloop.settings import Settings, get_settings
from worldloop.video import encode_mp4

log = logging.getLogger(__name__)

DEFAULT_CASES, DEFAULT_SIZE, DEFAULT_FRAMES, DEFAULT_SEED = 100, 64, 33, 0  # the shipped suite
HELD_OUT_SEED = 11  # the judge's accuracy is measured on worlds of this seed (never in the default suite)


def default_suite(settings: Settings) -> LoadedSuite:
    """The shipped SynthWorld suite, rendered once into the local home (deterministic)."""
    name = f"synthworld-s{DEFAULT_SEED}-{DEFAULT_SIZE}px-{DEFAULT_FRAMES}f-{DEFAULT_CASES}-{SUITE_TAG}"
    root = settings.home / "interbench" / name
    try:
        return load_suite(root)
    except FileNotFoundError:
        log.info("rendering the SynthWorld InterBench suite into %s (once)", root)
        return build_synthworld_suite(
            root, cases=DEFAULT_CASES, size=DEFAULT_SIZE, frames=DEFAULT_FRAMES, seed=DEFAULT_SEED
        )


def build_judge(name: str, *, url: str | None = None, model: str | None = None) -> Judge | str:
    """``synthworld`` (built per suite by :func:`run_interbench`) or ``vlm`` at ``url``."""
    if name == "synthworld":
        if url is not None:
            raise ValueError("--judge-url is for --judge vlm")
        return "synthworld"
    if name == "vlm":
        if not url or not model:
            raise ValueError(
                "--judge vlm needs --judge-url (an OpenAI-compatible endpoint) and --judge-model"
            )
        from worldloop.components.evaluation.judges.vlm import VLMJudge, VLMJudgeConfig

        return VLMJudge(VLMJudgeConfig(endpoint=url, model=model))
    raise ValueError(f"--judge must be synthworld or vlm, got {name!r}")


# -- generation ----------------------------------------------------------------------------------------
@torch.no_grad()
def generate_case(
    stack: ModelStack,
    suite: LoadedSuite,
    case: InterBenchCase,
    *,
    seed: int = 0,
    on_block: Callable[[int, StreamState], None] | None = None,
) -> np.ndarray:
    """The model's video for ``case``: (frames, H, W, 3) uint8 at the suite's size.

    Each instruction arrives with the block holding its frame, and only there (a changed instruction
    recaches once, as in serving; the stream keeps it until the next). ``on_block(block, state)`` is
    called after every generated block (block 1 is the first after the reference image)."""
    image = suite.image(case.id)
    h, w = image.shape[:2]
    rollout = stack.rollout(height=h, width=w, seed=seed)  # the checkpoint's own timesteps
    per_block = rollout.frames_per_block
    issued = instruction_blocks(case, per_block)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    state, first = rollout.start(pixels, prompt=case.prompt)
    frames = [first]
    actions = case.action_frames()
    made, block = 1, 1
    while made < case.frames:
        span = actions[made : made + per_block]
        span += [span[-1] if span else actions[-1]] * (per_block - len(span))  # hold the last input
        frames.append(rollout.step(state, span, instruction=issued.get(block)))
        if on_block is not None:
            on_block(block, state)
        made, block = made + per_block, block + 1
    video = torch.cat(frames, dim=2)[0, :, : case.frames]  # (3, F, H, W) in [-1, 1]
    return ((video.float().permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def instruction_blocks(case: InterBenchCase, frames_per_block: int) -> dict[int, str]:
    """Block index → the instruction issued with it: block b (≥ 1) generates frames
    1 + (b−1)·frames_per_block … b·frames_per_block. Two turns in one block cannot both be issued (a block
    takes one instruction), so such a case is refused for this model."""
    blocks: dict[int, str] = {}
    for n, turn in enumerate(case.instructions(), start=1):
        block = (turn.instruction_frame - 1) // frames_per_block + 1
        if block in blocks:
            raise ValueError(
                f"case {case.id}: turn {n} (frame {turn.instruction_frame}) falls in the block of the turn "
                f"before it for this model ({frames_per_block} frames per block); a block takes one "
                f"instruction: keep turns at least {frames_per_block} frames apart"
            )
        blocks[block] = turn.instruction
    return blocks


# -- metrics -------------------------------------------------------------------------------------------
def commanded_path(stack: ModelStack, suite: LoadedSuite, case: InterBenchCase) -> np.ndarray:
    if suite.has_truth(case.id):
        return suite.truth(case.id).c2w
    cfg = stack.model.cfg
    track = actions_to_camera(
        case.action_frames(),
        width=suite.suite.size,
        height=suite.suite.size,
        fov_deg=cfg.fov_deg,
        motion=cfg.motion,
    )
    return track.c2w.numpy().astype(np.float64)


def general_metrics(
    video: np.ndarray, case: InterBenchCase, suite: LoadedSuite, stack: ModelStack
) -> dict[str, float]:
    out: dict[str, float] = {
        "temporal_consistency": temporal_consistency(video).score,
        "dynamic_degree": dynamic_degree(video).magnitude,
        "image_quality": image_quality(video).score,
    }
    rpe = camera_rpe(video, commanded_path(stack, suite, case))
    out["camera_rpe_rot_deg"] = rpe.rotation_median
    if suite.has_truth(case.id):
        truth = suite.truth(case.id).event
        out["psnr"] = min(psnr(video, truth), 100.0)  # identical clips: inf, capped for JSON and means
        out["ssim"] = ssim(video, truth)
    return out


# -- the run -------------------------------------------------------------------------------------------
@dataclass
class InterBenchResult:
    out: Path
    interbench: dict[str, float | None]
    per_category: dict[str, dict[str, float | None]]
    general: dict[str, float]
    judge_accuracy: float | None
    cases: list[dict[str, Any]]
    multi_turn: dict[str, Any] | None = None  # judges.base.aggregate_turns; None without multi-turn cases


def case_row(case: InterBenchCase, scored: CaseScores, metrics: dict[str, float]) -> dict[str, Any]:
    """One case's entry in ``scores.json``; a multi-turn case also lists its turns with their scores."""
    row: dict[str, Any] = {
        "case": case.id,
        "category": case.category.value,
        "kind": case.kind,
        "instruction": " → ".join(t.instruction for t in case.instructions()),
        "scores": {d.value: scored.scores.get(d) for d in DIMENSIONS},
        "notes": scored.notes,
        "metrics": metrics,
        "video": f"videos/{case.id}.mp4",
    }
    if case.multi_turn:
        row["persistence"] = scored.persistence
        row["turns"] = [
            {
                "instruction": turn.instruction,
                "frame": turn.instruction_frame,
                "kind": turn.kind,
                "category": turn.category.value,
                "scores": {d.value: judged.scores.get(d) for d in DIMENSIONS},
                "persistence": judged.persistence,
            }
            for turn, judged in zip(case.turns, scored.turns, strict=True)
        ]
    return row


def _mean(rows: Sequence[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
    return float(np.mean(values)) if values else None


def run_interbench(
    model: str,
    *,
    out: str | Path,
    suite: str | Path | None = None,
    cases: int | None = None,
    judge: Judge | str = "synthworld",
    seed: int = 0,
    settings: Settings | None = None,
    track: bool = True,
    parent_run_id: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    i3d: str | Path | None = None,
) -> InterBenchResult:
    """Generate, judge and measure ``cases`` of ``suite`` with ``model``; write the report into ``out``.

    ``i3d``: a local Kinetics-400 I3D safetensors file; with it the Fréchet video distance is also
    computed with the published FVD network (``general.fvd_i3d``), next to the offline ``fd_stats``.
    """
    settings = settings or get_settings()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    stack = load_model_stack(model, settings=settings)  # first: a bad URI fails before any suite is rendered
    loaded = load_suite(suite) if suite is not None else default_suite(settings)
    chosen = loaded.select(cases)
    accuracy: float | None = None
    if isinstance(judge, str):
        if judge != "synthworld":
            raise ValueError(f"unknown judge {judge!r}; pass a judge object for 'vlm'")
        missing = [c.id for c in chosen if not loaded.has_truth(c.id)]
        if missing:
            raise ValueError(f"the synthworld judge needs ground truth; cases without it: {missing[:5]}")
        judge = SynthWorldJudge(loaded)
        size, frames = loaded.suite.size, loaded.suite.frames
        held = settings.home / "interbench" / f"held-out-s{HELD_OUT_SEED}-{size}px-{frames}f-{SUITE_TAG}"
        try:
            held_suite = load_suite(held)
        except FileNotFoundError:
            held_suite = build_synthworld_suite(
                held, cases=20, size=loaded.suite.size, frames=loaded.suite.frames, seed=HELD_OUT_SEED
            )
        measured = judge_accuracy(held_suite)
        accuracy = measured.accuracy
        verdict = "trusted" if measured.trusted else "NOT trusted (below 0.95): read its scores with care"
        log.info(
            "SynthWorld judge held-out accuracy %.3f on %d decisions: %s",
            accuracy,
            measured.decisions,
            verdict,
        )

    results: list[CaseScores] = []
    rows: list[dict[str, Any]] = []
    videos: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    started = time.perf_counter()
    for i, case in enumerate(chosen):
        video = generate_case(stack, loaded, case, seed=seed + i)
        encode_mp4(video, out / "videos" / f"{case.id}.mp4", fps=loaded.suite.fps)
        scored = judge.score(case, video)
        metrics = general_metrics(video, case, loaded, stack)
        results.append(scored)
        videos.append(video)
        if loaded.has_truth(case.id):
            truths.append(loaded.truth(case.id).event)
        rows.append(case_row(case, scored, metrics))
        if on_progress:
            on_progress(i + 1, len(chosen))
    close = getattr(judge, "close", None)
    if callable(close):  # the VLM judge holds an HTTP client
        close()
    interbench = aggregate(results)
    per_category = {
        cat: aggregate([r for r in results if r.category == cat])
        for cat in sorted({r.category for r in results})
    }
    metric_rows = [r["metrics"] for r in rows]
    general: dict[str, float] = {}
    for key in sorted({k for r in metric_rows for k in r}):
        value = _mean(metric_rows, key)
        if value is not None:
            general[key] = value
    if len(videos) >= 2 and len(truths) == len(videos):
        general["fd_stats"] = fvd(videos, truths, extractor=StatsFeatures())
        if i3d is not None:
            general["fvd_i3d"] = fvd(videos, truths, extractor=I3DFeatures(i3d))
    multi_turn = aggregate_turns(results)
    result = InterBenchResult(out, interbench, per_category, general, accuracy, rows, multi_turn)
    payload = {
        "model": model,
        "preset": stack.preset,
        "checkpoint": str(stack.checkpoint) if stack.checkpoint else None,
        "suite": {"name": loaded.suite.name, "root": str(loaded.root), "cases": len(chosen)},
        "judge": {"name": judge.name, "held_out_accuracy": accuracy},
        "interbench": interbench,
        "per_category": per_category,
        "multi_turn": multi_turn,
        "general": general,
        "seconds": time.perf_counter() - started,
        "cases": rows,
    }
    (out / "scores.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    from worldloop.components.evaluation.report import write_report

    write_report(out, payload)
    if track:
        _log_mlflow(payload, out, settings, parent_run_id)
    return result


def _log_mlflow(payload: dict[str, Any], out: Path, settings: Settings, parent_run_id: str | None) -> None:
    import mlflow

    params = {
        "model": payload["model"],
        "suite": payload["suite"]["name"],
        "cases": payload["suite"]["cases"],
    }
    with step_run(EVALUATION, "interbench", params=params, settings=settings, parent_run_id=parent_run_id):
        metrics = {f"interbench.{k}": v for k, v in payload["interbench"].items() if v is not None}
        metrics |= {f"general.{k}": v for k, v in payload["general"].items()}
        metrics |= multi_turn_metrics(payload["multi_turn"])
        if payload["judge"]["held_out_accuracy"] is not None:
            metrics["judge.held_out_accuracy"] = payload["judge"]["held_out_accuracy"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), artifact_path="interbench")


def multi_turn_metrics(summary: dict[str, Any] | None) -> dict[str, float]:
    """MLflow metrics of the multi-turn summary: ``interbench.multi_turn.turn_N.DIM``,
    ``interbench.multi_turn.persistence`` and ``interbench.multi_turn.persistence.turn_N``."""
    if summary is None:
        return {}
    prefix = "interbench.multi_turn"
    out = {
        f"{prefix}.turn_{n}.{dim}": value
        for n, dims in summary["turns"].items()
        for dim, value in dims.items()
        if value is not None
    }
    out |= {
        f"{prefix}.persistence.turn_{n}": value
        for n, value in summary["persistence_by_turn"].items()
        if value is not None
    }
    if summary["persistence"] is not None:
        out[f"{prefix}.persistence"] = summary["persistence"]
    return out
