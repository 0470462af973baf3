"""The pipeline's training step (``component.train_stage``): the stage's config from the step's
parameters, trained in the step's own pod or, when the pipeline was compiled with a training-job
template, as a KubeRay RayJob over several pods (:mod:`.cluster_job`)."""

from __future__ import annotations

from dataclasses import dataclass

from worldloop.model.train.config import TrainConfig, stage_preset


def step_config(
    stage: str, *, preset: str, steps_scale: float, max_steps: int, clip_frames: int
) -> TrainConfig:
    """``stage``'s preset at the ``preset`` scale, its curriculum scaled by ``steps_scale``; ``clip_frames``
    > 0 sets the clip length (stage 4: the long clips'); a short run (``max_steps`` > 0) still saves its
    last step and logs every step."""
    cfg = stage_preset(stage, scale=preset).scaled(steps_scale)
    if clip_frames > 0:
        cfg = cfg.with_clip_frames(clip_frames)
    if max_steps > 0:
        cfg = cfg.model_copy(update={"checkpoint_every": max_steps, "log_every": 1})
    return cfg


@dataclass(frozen=True)
class StepResult:
    steps: int
    losses: list[float]
    mlflow_run_id: str | None


def train_step(
    cfg: TrainConfig,
    *,
    data: str,
    out: str,
    init: str | None,
    max_steps: int | None,
    parent_run_id: str | None,
    train_job: str | None = None,
) -> StepResult:
    """Train ``cfg`` on ``data`` into ``out`` (the step's artifacts' local paths), from ``init``: here,
    or as the RayJob of ``train_job`` (a :class:`~.cluster_job.RayJobTemplate` as JSON)."""
    if train_job:
        from worldloop.components.training.cluster_job import RayJobTemplate, train_as_rayjob

        job = train_as_rayjob(
            RayJobTemplate.model_validate_json(train_job),
            cfg,
            data=data,
            out=out,
            init=init,
            max_steps=max_steps,
            parent_run_id=parent_run_id,
        )
        return StepResult(job.steps, job.losses, job.mlflow_run_id)
    from worldloop.components.training.run import run_stage

    run = run_stage(cfg, data=data, out=out, init=init, max_steps=max_steps, parent_run_id=parent_run_id)
    return StepResult(run.result.steps, run.result.losses, run.mlflow_run_id)
