"""The ``full`` pipeline: curation (+ SynthWorld) → stage 0 (the VAE) and stages 1–4 → InterBench and
the quality ladder → candidate version.

Raw text-video pairs — the user's own (``source_uri``: a folder or ``s3://`` prefix), else SynthWorld's
raw pairs with their defects — go through curation. Every training stage reads the curated clips mixed
with SynthWorld's labelled clips (exact cameras, actions, events) at ``synthetic_weight``; stage 4
reads windows of ``long_frames`` frames (10 s at 16 fps by default) from the curated shots that long
and SynthWorld's long clips. Each checkpoint records the shards its stages read; the registered version
carries that lineage.
"""

from kfp import dsl
from kfp.dsl import PipelineTask
from kfp.dsl.graph_component import GraphComponent

from worldloop.components.curation.component import curate
from worldloop.components.evaluation.component import evaluate, quality
from worldloop.components.registry.component import register
from worldloop.components.synthworld.component import synth
from worldloop.components.training.component import mix_data, train_stage
from worldloop.pipelines.cluster import ClusterConfig, apply_common, apply_training
from worldloop.pipelines.training_job import training_job

STAGES = ("vae", "action", "instruction", "distill", "long")


def cached(task: PipelineTask, cache_key: str | None) -> PipelineTask:
    """Local runs key the cache on a fingerprint of the inputs (``worldloop.pipelines.local``)."""
    if cache_key is not None:
        task.set_caching_options(True, cache_key=f"{cache_key}:{task.name}")
    return task


def build(cluster: ClusterConfig | None = None, *, cache_key: str | None = None) -> GraphComponent:
    cfg = cluster or ClusterConfig()
    job = training_job(cfg)  # each training step's RayJob (ClusterConfig.train_job), or none

    @dsl.pipeline(
        name="worldloop-full",
        description="SynthWorld/curation → VAE, stages 1–4 → InterBench + quality ladder → registry",
    )
    def full(
        preset: str = "tiny",
        clips: int = 24,
        raw_clips: int = 12,
        frames: int = 33,
        size: int = 128,
        seed: int = 0,
        max_steps: int = 0,
        steps_scale: float = 1.0,
        eval_cases: int = 4,
        suite_cases: int = 0,
        quality_clips: int = 4,
        quality_blocks: int = 2,
        quality_cases: int = 4,
        curation_executor: str = "ray",
        source_uri: str = "",
        synthetic_weight: float = 0.5,
        long_clips: int = 4,
        long_frames: int = 161,
        twins: bool = True,
        parent_run_id: str = "",
    ) -> int:
        # labelled clips for training; raw pairs with bad items for curation; long clips for stage 4
        labelled, raw, long = (
            synth(
                clips=count,
                frames=length,
                size=size,
                seed=seed,
                raw=is_raw,
                bad_fraction=bad,
                parent_run_id=parent_run_id,
                twins=twin,
            ).set_display_name(label)
            # the labelled clips with their counterfactual twins (``twins``): beside its twin, a clip's
            # event is told apart only by its instruction, which stage 2 must learn to read
            for count, length, is_raw, bad, twin, label in (
                (clips, frames, False, 0.0, twins, "synthworld"),
                (raw_clips, frames, True, 0.4, False, "synthworld-raw"),
                (long_clips, long_frames, False, 0.0, False, "synthworld-long"),
            )
        )
        curated = curate(  # the user's pairs when source_uri is set, else SynthWorld's raw pairs
            source_uri=source_uri,
            executor=curation_executor,
            parent_run_id=parent_run_id,
            raw=raw.outputs["dataset"],
        ).set_display_name("curation")
        mixed, mixed_long = (
            mix_data(
                curated=curated.outputs["curated"],
                synthetic=synthetic.outputs["dataset"],
                synthetic_weight=synthetic_weight,
            ).set_display_name(label)
            for synthetic, label in ((labelled, "mix"), (long, "mix-long"))
        )
        for task in (labelled, raw, long, curated, mixed, mixed_long):
            cached(apply_common(task, cfg), cache_key)
        previous: PipelineTask | None = None
        for stage in STAGES:
            init = {} if previous is None else {"init": previous.outputs["checkpoint"]}
            is_long = stage == "long"  # stage 4 trains on long clips (curated shots of that length too)
            train = train_stage(
                stage=stage,
                preset=preset,
                max_steps=max_steps,
                steps_scale=steps_scale,
                clip_frames=long_frames if is_long else 0,
                parent_run_id=parent_run_id,
                data=(mixed_long if is_long else mixed).outputs["data"],
                train_job=job.model_dump_json() if job is not None else "",
                **init,
            ).set_display_name(f"train-{stage}")
            cached(apply_training(train, cfg), cache_key)
            previous = train
        assert previous is not None
        scores = evaluate(
            model_uri="",
            cases=eval_cases,
            suite_cases=suite_cases,
            parent_run_id=parent_run_id,
            checkpoint=previous.outputs["checkpoint"],
        ).set_display_name("interbench")
        cached(apply_common(scores, cfg), cache_key)
        ladder = quality(
            clips=quality_clips,
            blocks=quality_blocks,
            cases=quality_cases,
            parent_run_id=parent_run_id,
            checkpoint=previous.outputs["checkpoint"],
        ).set_display_name("quality")
        cached(apply_common(ladder, cfg), cache_key)
        # Not cached: every pipeline run registers its own version (DESIGN.md §8).
        version = register(
            parent_run_id=parent_run_id,
            checkpoint=previous.outputs["checkpoint"],
            interbench=scores.outputs["interbench"],
            quality=ladder.outputs["report"],
        ).set_display_name("register")
        apply_common(version, cfg).set_caching_options(False)
        return version.output

    return full
