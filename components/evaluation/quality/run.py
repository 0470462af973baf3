"""``worldloop eval quality``: a model beside its random-weight and frozen-first-frame baselines (and the
truth, where the estimator or the judge is the limit) on held-out SynthWorld.

Writes into ``out``::

    quality.json        every number: model URI, version, spec summary, sampler, held-out seed and
                        sizes, each contestant's metrics and per-clip detail, definitions, seconds
    block_psnr.png      PSNR per block, model vs random vs frozen
    samples/clip_NN.mp4 truth | model | random, side by side

and an MLflow run ``quality`` in ``worldloop-evaluation`` (or beside ``parent_run_id``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldloop.components.evaluation.judges.synthworld import SynthWorldJudge
from worldloop.components.evaluation.quality.contestants import (
    INPUTS,
    Contestant,
    FrozenContestant,
    ModelContestant,
    PlaneContestant,
    TruthContestant,
)
from worldloop.components.evaluation.quality.generate import (
    TEACHER_STEPS,
    Sampler,
    choose_sampler,
    random_weight_stack,
)
from worldloop.components.evaluation.quality.heldout import (
    DIRECTION_PAIRS,
    HELD_OUT_SEED,
    HeldOutSet,
    held_out_set,
)
from worldloop.components.evaluation.quality.measures import (
    DEFINITIONS,
    ContestantScores,
    measure,
    metric_keys,
)
from worldloop.components.evaluation.quality.report import plot_block_psnr, write_samples
from worldloop.components.evaluation.suite import (
    SUITE_TAG,
    LoadedSuite,
    build_synthworld_suite,
    load_suite,
)
from worldloop.platform.stack import ModelStack, load_model_stack
from worldloop.platform.tracking import EVALUATION, step_run
from worldloop.settings import Settings, get_settings

log = logging.getLogger(__name__)

DEFAULT_CLIPS, DEFAULT_BLOCKS, DEFAULT_CASES = 4, 2, 6
INTERBENCH_BLOCKS = 4  # InterBench cases run 1 + 4 blocks of frames (tiny: 33, the shipped suite's length)
CONTESTANTS = ("model", "random", "frozen", "truth")  # in every report (plane/still where the spec has them)
CACHED = ("random", "frozen", "truth")  # baselines that depend on the spec and sampler only, not on weights
BaselineCache = dict[str, ContestantScores]  # reuse of baselines across calls (the bench's rungs)


@dataclass
class QualityResult:
    out: Path
    payload: dict[str, Any]  # what quality.json holds

    @property
    def metrics(self) -> dict[str, dict[str, float | None]]:
        """Contestant → metric → value."""
        return {name: c["metrics"] for name, c in self.payload["contestants"].items()}


def quality_suite(settings: Settings, *, size: int, frames: int, cases: int) -> LoadedSuite:
    """The ladder's InterBench suite: ``cases`` SynthWorld cases of the held-out seed (kinds in turn),
    rendered once into the local home."""
    root = settings.home / "interbench" / f"quality-s{HELD_OUT_SEED}-{size}px-{frames}f-{cases}-{SUITE_TAG}"
    try:
        return load_suite(root)
    except FileNotFoundError:
        log.info("rendering the held-out InterBench suite into %s (once)", root)
        return build_synthworld_suite(root, cases=cases, size=size, frames=frames, seed=HELD_OUT_SEED)


def spec_summary(stack: ModelStack) -> dict[str, Any]:
    spec = stack.spec
    return {
        "preset": spec.model.name,
        "height": spec.height,
        "width": spec.width,
        "fps": spec.fps,
        "parameters": sum(p.numel() for p in stack.model.parameters()),
        "experts": spec.model.num_experts,
        "block_frames": spec.model.causal.block_frames,
        "vae": spec.model.vae.model_dump(mode="json"),
        "text_encoder": spec.text_encoder.kind,
        "timesteps": stack.timesteps,
    }


def build_contestants(
    stack: ModelStack, sampler: Sampler, *, fov_deg: float, teacher_steps: int, seed: int
) -> dict[str, Contestant]:
    """The model, random weights of its spec (same sampler, weights seeded with ``seed``), the frozen
    first frame and the truth, in :data:`CONTESTANTS` order; before the truth, for a model whose I2V
    channels carry the still latent, its decoded I2V input (``plane`` with ``i2v_warp``, else ``still``)."""
    random = random_weight_stack(stack, seed=seed)
    contestants: dict[str, Contestant] = {
        "model": ModelContestant("model", stack, sampler, fov_deg, teacher_steps),
        "random": ModelContestant("random", random, sampler, fov_deg, teacher_steps),
        "frozen": FrozenContestant(),
    }
    cfg = stack.model.cfg
    if cfg.i2v_still:
        plane, still = INPUTS
        name = plane if cfg.i2v_warp is not None else still
        contestants[name] = PlaneContestant(stack, fov_deg, name)
    contestants["truth"] = TruthContestant()
    return contestants


def _cache_key(
    name: str,
    stack: ModelStack,
    sampler: Sampler,
    held: HeldOutSet,
    *,
    cases: int,
    seed: int,
    teacher_steps: int,
) -> str:
    """What a baseline's numbers depend on: the held-out set and, for random weights, spec and sampler."""
    model = f"{stack.spec.model_dump_json()}|{sampler.value}|{teacher_steps}" if name == "random" else ""
    return f"{name}|{model}|{held.height}x{held.width}|{len(held.clips)}|{held.blocks}|{cases}|{seed}"


def run_quality(
    model: str,
    *,
    out: str | Path,
    clips: int = DEFAULT_CLIPS,
    blocks: int = DEFAULT_BLOCKS,
    cases: int = DEFAULT_CASES,
    seed: int = 0,
    sampler: str = "auto",
    teacher_steps: int = TEACHER_STEPS,
    settings: Settings | None = None,
    track: bool = True,
    parent_run_id: str | None = None,
    baselines: BaselineCache | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> QualityResult:
    """Measure ``model`` and its baselines on held-out SynthWorld; write the report into ``out``.

    ``seed`` seeds the sampling noise and the random-weight baseline. ``baselines``: a dict shared by
    several calls keeps the random (same spec and sampler), frozen and truth scores of the first call.
    """
    settings = settings or get_settings()
    started = time.perf_counter()
    stack = load_model_stack(model, settings=settings, seed=seed)  # first: a bad URI fails at once
    if cases < 0:
        raise ValueError(f"--cases must be ≥ 0, got {cases}")
    chosen = choose_sampler(stack, sampler)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    held = held_out_set(stack.spec, clips=clips, blocks=blocks)
    fov = held.cfg.fov_deg
    suite, selected = None, []
    if cases:
        suite = quality_suite(
            settings, size=held.cfg.size, frames=1 + INTERBENCH_BLOCKS * held.frames_per_block, cases=cases
        )
        selected = suite.select(cases)
    judge = SynthWorldJudge(suite) if suite is not None else None
    contestants = build_contestants(stack, chosen, fov_deg=fov, teacher_steps=teacher_steps, seed=seed)
    per_contestant = len(held.clips) * (1 + 2 * len(DIRECTION_PAIRS)) + len(selected)  # videos each
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, per_contestant * len(contestants))

    scores: dict[str, ContestantScores] = {}
    for name, contestant in contestants.items():
        key = _cache_key(name, stack, chosen, held, cases=cases, seed=seed, teacher_steps=teacher_steps)
        if name in CACHED and baselines is not None and key in baselines:
            scores[name] = baselines[key]
            done += per_contestant
            continue
        log.info("quality: measuring %s", name)
        scores[name] = measure(
            contestant,
            held,
            fov_deg=fov,
            seed=seed,
            suite=suite,
            cases=selected,
            judge=judge,
            with_fidelity=name != "truth",
            on_video=tick,
        )
        if name in CACHED and baselines is not None:
            baselines[key] = scores[name]
    payload = _payload(stack, chosen, held, scores, suite, seed=seed, teacher_steps=teacher_steps)
    _write_files(out, payload, held, scores, fps=stack.spec.fps)
    payload["seconds"]["total"] = time.perf_counter() - started
    (out / "quality.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    if track:
        _log_mlflow(payload, out, settings, parent_run_id)
    return QualityResult(out, payload)


def _payload(
    stack: ModelStack,
    sampler: Sampler,
    held: HeldOutSet,
    scores: dict[str, ContestantScores],
    suite: LoadedSuite | None,
    *,
    seed: int,
    teacher_steps: int,
) -> dict[str, Any]:
    return {
        "model": str(stack.uri),
        "version": stack.version,
        "checkpoint": str(stack.checkpoint) if stack.checkpoint else None,
        "stage": stack.stage,
        "spec": spec_summary(stack),
        "sampler": {
            "kind": sampler.value,
            "timesteps": stack.timesteps if sampler is Sampler.rollout else None,
            "teacher_steps": teacher_steps if sampler is Sampler.teacher else None,
            "interbench": Sampler.rollout.value,
        },
        "held_out": {
            "seed": held.seed,
            "clips": len(held.clips),
            "clip_seeds": [c.seed for c in held.clips],
            "blocks": held.blocks,
            "frames_per_block": held.frames_per_block,
            "frames": held.frames,
            "height": held.height,
            "width": held.width,
            "render_size": held.cfg.size,
            "fov_deg": held.cfg.fov_deg,
            "interbench_suite": suite.suite.name if suite else None,
            "interbench_cases": len(suite.cases) if suite else 0,
        },
        "sampling_seed": seed,
        "metric_keys": metric_keys(held.blocks),
        "contestants": {
            name: {"metrics": s.metrics, "seconds": s.seconds, "clips": s.clips} for name, s in scores.items()
        },
        "definitions": DEFINITIONS,
        "seconds": {name: sum(s.seconds.values()) for name, s in scores.items()},
    }


def _write_files(
    out: Path, payload: dict[str, Any], held: HeldOutSet, scores: dict[str, ContestantScores], *, fps: float
) -> None:
    """The PSNR plot and the truth | model | random samples; their names go into ``payload["files"]``."""
    plot = plot_block_psnr(out / "block_psnr.png", payload, blocks=held.blocks)
    samples = write_samples(out / "samples", held, [scores["model"], scores["random"]], fps=fps)
    payload["files"] = {"plot": plot.name, "samples": [str(p.relative_to(out)) for p in samples]}


def _log_mlflow(payload: dict[str, Any], out: Path, settings: Settings, parent_run_id: str | None) -> None:
    import mlflow

    held = payload["held_out"]
    params = {
        "model": payload["model"],
        "version": payload["version"],
        "preset": payload["spec"]["preset"],
        "stage": payload["stage"],
        "sampler": payload["sampler"]["kind"],
        "held_out_seed": held["seed"],
        "clips": held["clips"],
        "blocks": held["blocks"],
        "cases": held["interbench_cases"],
        "sampling_seed": payload["sampling_seed"],
    }
    with step_run(EVALUATION, "quality", params=params, settings=settings, parent_run_id=parent_run_id):
        metrics = {
            f"{name}.{key}": value
            for name, c in payload["contestants"].items()
            for key, value in c["metrics"].items()
            if value is not None
        }
        mlflow.log_metrics(metrics)
        mlflow.log_metric("seconds", payload["seconds"]["total"])
        mlflow.log_artifacts(str(out), artifact_path="quality")
