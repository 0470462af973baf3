"""KFP component: one training stage (action | instruction | distill | long), resumable, in MLflow;
in the step's pod or as a KubeRay RayJob on several pods.

Top-level imports are stdlib and ``kfp.dsl`` only; the body imports the library from the image.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from worldloop.components.base_image import IMAGE


@dsl.component(base_image=IMAGE)
def train_stage(
    stage: str,
    preset: str,
    max_steps: int,
    steps_scale: float,
    parent_run_id: str,
    data: Input[Dataset],
    checkpoint: Output[Model],
    init: Input[Model] | None = None,
    clip_frames: int = 0,
    train_job: str = "",
) -> None:
    """Train ``stage`` of the ``preset`` scale on ``data`` into ``checkpoint``, initialised from ``init``
    (the previous stage's checkpoint). ``steps_scale`` scales the preset's curriculum (1.0: as is);
    ``max_steps`` > 0 caps the steps (a short run); 0 runs the whole (scaled) curriculum;
    ``clip_frames`` > 0 sets the curriculum's clip length (stage 4: the long clips' length).
    ``train_job``: a RayJob template (JSON, from the cluster config): the stage trains as that KubeRay
    RayJob on several pods and this step streams its log and waits; empty: it trains in this pod."""
    from worldloop.components.training.step import step_config, train_step

    cfg = step_config(
        stage, preset=preset, steps_scale=steps_scale, max_steps=max_steps, clip_frames=clip_frames
    )
    run = train_step(
        cfg,
        data=data.path,
        out=checkpoint.path,
        init=init.path if init is not None else None,
        max_steps=max_steps if max_steps > 0 else None,
        parent_run_id=parent_run_id or None,
        train_job=train_job or None,
    )
    checkpoint.metadata.update(
        {
            "stage": stage,
            "preset": preset,
            "steps": run.steps,
            "mlflow_run_id": run.mlflow_run_id or "",
        }
    )
    if run.losses:
        checkpoint.metadata["final_loss"] = float(run.losses[-1])


@dsl.component(base_image=IMAGE)
def mix_data(
    curated: Input[Dataset],
    synthetic: Input[Dataset],
    synthetic_weight: float,
    data: Output[Dataset],
) -> None:
    """The training data of every stage: the ``curated`` dataset mixed with the ``synthetic`` one
    (SynthWorld's labelled clips: exact cameras, actions, events) at ``synthetic_weight`` (0: curated
    only), written as ``mixture.json``."""
    from worldloop.components.training.mixing import training_mixture

    sources = training_mixture(curated.path, synthetic.path, synthetic_weight=synthetic_weight, out=data.path)
    data.metadata["sources"] = [s.model_dump() for s in sources]
