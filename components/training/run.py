"""``worldloop train``: one stage on SynthWorld or curated data, tracked in MLflow, resumable."""

from __future__ import annotations

import copy
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from worldloop.components.training.sample import reconstruction_video, sample_video
from worldloop.data import DataSource, Lineage, Mixture, TeacherLineage, read_lineage
from worldloop.model import WorldModel
from worldloop.model.spec import ModelSpec, build_modules, preset_spec, preset_text_encoder, read_spec
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.checkpoint import (
    is_partitioned,
    latest_checkpoint,
    load_checkpoint,
    weights_sha256,
)
from worldloop.model.train.config import Stage, TrainConfig
from worldloop.model.train.loop import TrainResult, build_trainer
from worldloop.model.train.objectives.vae import fit_fresh_code
from worldloop.model.vae import CausalVideoVAE
from worldloop.model.weights.wan_vae import FILE_NAMES as WAN_VAE_FILES
from worldloop.model.weights.wan_vae import load_wan_vae
from worldloop.platform.checkpoints import training_folder
from worldloop.platform.stack import text_encoder_for
from worldloop.platform.tracking import StageTracker
from worldloop.settings import Settings, get_settings

log = logging.getLogger(__name__)


def open_training_data(data: str | DataSource | Sequence[str | DataSource], *, settings: Settings) -> Mixture:
    """The stage's data: one dataset, a ``mixture.json`` folder, or a weighted list of them, read
    clip by clip within the settings' cache budget."""
    return Mixture.open(data, cache_bytes=settings.data_cache_mb * 2**20, settings=settings)


def stage_spec(
    cfg: TrainConfig, init: Path | None, *, settings: Settings, fov_deg: float | None = None
) -> ModelSpec:
    """The spec a stage trains: the one its ``--init`` checkpoint was trained with, at this stage's
    size, else a fresh spec of the config's preset (the first stage of a chain) with the preset's text
    encoder (the settings' umT5 folder for small/a14b when set) and ``fov_deg``, the training data's
    field of view (the camera the model learns its Plücker rays in, and so the one it is served with)."""
    if init is None:
        encoder = preset_text_encoder(cfg.model_preset, t5_path=settings.t5_path)
        spec = preset_spec(cfg.model_preset, height=cfg.height, width=cfg.width, text_encoder=encoder)
        fov = fov_deg
        if fov is None:
            return spec
        return spec.model_copy(update={"model": spec.model.model_copy(update={"fov_deg": round(fov, 3)})})
    spec = read_spec(init)
    if spec.model.name != cfg.model_preset:
        raise ValueError(
            f"--init {init} holds a {spec.model.name!r} model but the stage config names preset "
            f"{cfg.model_preset!r}"
        )
    return spec.model_copy(update={"height": cfg.height, "width": cfg.width})


@dataclass(frozen=True)
class InitSource:
    """What ``--init`` names: a previous stage's checkpoint, or the released Wan VAE (a safetensors
    file or folder, for users who have it and skip stage 0)."""

    path: Path
    wan_vae: bool = False


def _is_wan_vae(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".safetensors"
    return path.is_dir() and any((path / name).is_file() for name in WAN_VAE_FILES)


def _init_source(init: str | Path, settings: Settings) -> InitSource:
    init_dir, init_mirror = training_folder(init, settings=settings, pull=False)
    if init_mirror is not None:
        init_dir = init_mirror.pull(init_dir.with_name(init_dir.name + "-init"))
    found = latest_checkpoint(init_dir)
    if found is not None:
        return InitSource(found)
    if init_mirror is None and _is_wan_vae(init_dir):
        return InitSource(init_dir, wan_vae=True)
    raise FileNotFoundError(f"--init {init}: no checkpoint (no 'latest' file) and not a Wan VAE safetensors")


def _load_init(init: InitSource, *, model: WorldModel, vae: CausalVideoVAE) -> None:
    """The previous stage's weights (none after stage 0, which trains only the VAE) and the VAE that
    travels with every checkpoint — or the released Wan VAE."""
    if init.wan_vae:
        vae.load_state_dict(load_wan_vae(init.path, cfg=vae.cfg).state_dict())
    else:
        if (init.path / "model.safetensors").is_file():
            load_checkpoint(init.path, model=model, optimizer=None, ema=None)
        vae_file = init.path / "vae.safetensors"
        if vae_file.is_file():
            vae.load_state_dict(load_file(str(vae_file)))
        else:
            log.warning("%s carries no VAE: keeping the seeded initial one", init.path)
    log.info("initialised from %s", init.path)


def training_stack(
    cfg: TrainConfig,
    *,
    init: InitSource | None,
    resume: Path | None,
    settings: Settings,
    fov_deg: float | None = None,
    device: torch.device | str = "cpu",
) -> tuple[ModelSpec, WorldModel, CausalVideoVAE, TextEncoder]:
    """What a stage trains: the spec, the world model and VAE (seeded; the ``init`` checkpoint's weights
    and VAE loaded, or the VAE of the checkpoint being resumed) and the spec's text encoder.
    ``device="meta"`` builds the shapes only (a14b on a laptop)."""
    from_checkpoint = init.path if init is not None and not init.wan_vae else resume
    spec = stage_spec(cfg, from_checkpoint, settings=settings, fov_deg=fov_deg)
    model, vae = build_modules(spec, seed=cfg.seed, device=device)
    if init is not None:
        _load_init(init, model=model, vae=vae)
    elif resume is not None and (resume / "vae.safetensors").is_file():
        vae.load_state_dict(load_file(str(resume / "vae.safetensors")))
    return spec, model, vae, text_encoder_for(spec)


@dataclass(frozen=True)
class Scores:
    """Stages 3-4: the frozen real score (teacher), the fake score (critic) to start from (None: a
    copy of the teacher) and the lineage recording the teacher. Other stages: all None but the
    inherited lineage."""

    teacher: WorldModel | None
    critic: WorldModel | None
    lineage: Lineage | None


def _module_from(spec: ModelSpec, file: Path) -> WorldModel:
    module = WorldModel(spec.model)
    module.load_state_dict(load_file(str(file)))
    return module


def distillation_scores(
    spec: ModelSpec,
    *,
    model: WorldModel,
    start: Path | None,
    lineage: Lineage | None,
    init: str | Path | None,
) -> Scores:
    """The scores a distillation stage (3 or 4) runs with, from ``start``, the checkpoint it begins
    from (its ``--init`` or the one it resumes). A checkpoint of stage 3 or 4 carries its frozen
    teacher (``teacher.safetensors``, the stage-2 model) and its critic: stage 4 continues with both. A
    checkpoint without a teacher is the bidirectional base model itself (stage 3's ``--init``): it is
    the teacher and the critic's start. The teacher's weights hash is checked against the one the
    lineage recorded, or recorded there."""
    teacher_file = start / "teacher.safetensors" if start is not None else None
    if teacher_file is not None and teacher_file.is_file():
        teacher = _module_from(spec, teacher_file)
    else:
        teacher = copy.deepcopy(model)
    critic_file = start / "critic.safetensors" if start is not None else None
    critic = _module_from(spec, critic_file) if critic_file is not None and critic_file.is_file() else None
    digest = weights_sha256(teacher.state_dict())
    lineage = lineage or Lineage()
    if lineage.teacher is not None and lineage.teacher.weights_sha256 != digest:
        raise ValueError(
            f"{start}: its teacher's weights (sha256 {digest[:12]}) are not the teacher its lineage "
            f"records ({lineage.teacher.weights_sha256[:12]}, from {lineage.teacher.source}): the "
            "checkpoint was altered"
        )
    if lineage.teacher is None:
        stage = lineage.stages[-1].stage if lineage.stages else "unknown"
        record = TeacherLineage(
            stage=stage, source=str(init if init is not None else start), weights_sha256=digest
        )
        lineage = lineage.model_copy(update={"teacher": record})
    log.info("real score: %s model, sha256 %s", lineage.teacher.stage, digest[:12])  # type: ignore[union-attr]
    return Scores(teacher, critic, lineage)


@dataclass(frozen=True)
class StageRun:
    result: TrainResult
    mlflow_run_id: str | None
    checkpoint_dir: Path


def run_stage(
    cfg: TrainConfig,
    *,
    data: str | Sequence[str | DataSource] | None = None,
    out: str | Path,
    init: str | Path | None = None,
    max_steps: int | None = None,
    track: bool = True,
    parent_run_id: str | None = None,
    settings: Settings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> StageRun:
    """Train stage ``cfg.stage`` on ``data`` (else the config's ``data`` mixture) into ``out``,
    initialised from ``init`` (a previous stage's checkpoint, whose data lineage this stage extends),
    resuming from ``out`` when it holds a checkpoint."""
    settings = settings or get_settings()
    sources = data if data is not None else list(cfg.data)
    if not sources:
        raise ValueError(f"stage {cfg.stage.value}: no training data (give --data or the config's data list)")
    mixture = open_training_data(sources, settings=settings)
    checkpoint_dir, mirror = training_folder(out, settings=settings, pull=True)
    source = None
    if init is not None and latest_checkpoint(checkpoint_dir) is None:
        source = _init_source(init, settings)
    spec, model, vae, text_encoder = training_stack(
        cfg,
        init=source,
        resume=latest_checkpoint(checkpoint_dir),
        settings=settings,
        fov_deg=mixture.fov_deg(),
    )
    if cfg.stage is Stage.vae and source is None and latest_checkpoint(checkpoint_dir) is None:
        rms = fit_fresh_code(vae, cfg, mixture)  # a linear block code starts as the data's PCA
        if rms is not None:
            log.info("VAE linear block code fitted (PCA), RMS coefficient %.3f", rms)
    inherited = read_lineage(source.path) if source is not None and not source.wan_vae else None
    scores = Scores(None, None, inherited)
    if cfg.stage in (Stage.distill, Stage.long):
        start = source.path if source is not None else latest_checkpoint(checkpoint_dir)
        if source is None and start is not None:
            inherited = read_lineage(start)  # the trainer takes it from the resumed checkpoint, too
        scores = distillation_scores(spec, model=model, start=start, lineage=inherited, init=init)
    tracker = None
    if track and int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        tracker = StageTracker(
            settings=settings,
            run_name=f"stage-{cfg.stage.value}",
            params={
                "config": cfg.model_dump(mode="json"),
                "data": [s.model_dump() for s in mixture.sources],
                "clips": mixture.clips,
                **(
                    {"teacher_sha256": scores.lineage.teacher.weights_sha256}
                    if scores.lineage and scores.lineage.teacher
                    else {}
                ),
            },
            parent_run_id=parent_run_id,
        )
    trainer = build_trainer(
        cfg,
        model,
        vae=vae,
        text_encoder=text_encoder,
        data=mixture,
        checkpoint_dir=checkpoint_dir,
        spec=spec,
        lineage=scores.lineage,
        on_metrics=tracker.log_metrics if tracker else None,
        on_progress=on_progress,
        on_checkpoint=mirror.push if mirror else None,
        on_shard=mirror.push_shards if mirror else None,
        teacher=scores.teacher,
        critic=scores.critic,
    )
    # the end-of-stage sample (what the stage generates now, with its own schedule): rank 0 logs it
    sample = functools.partial(
        _sample,
        model,
        vae=vae,
        text_encoder=text_encoder,
        data=mixture,
        cfg=cfg,
        timesteps=trainer.objective.checkpoint_spec(spec).schedule.resolve(spec.model),
    )
    if tracker is None:
        result = trainer.run(max_steps=max_steps)
        if track and result.losses and _partitioned(trainer.primary.module):  # a ZeRO-3 rank > 0
            with tempfile.TemporaryDirectory() as tmp:
                sample(folder=Path(tmp))  # its video is not kept
        return StageRun(result, None, checkpoint_dir)
    with tracker:
        result = trainer.run(max_steps=max_steps)
        first = result.resumed_from or 0
        tracker.finish(
            losses=result.losses,
            first_step=first,
            checkpoint=str(result.checkpoint.resolve()) if result.checkpoint else None,
        )
        if result.losses:  # a stage that trained shows what it generates now
            with tempfile.TemporaryDirectory() as tmp:
                tracker.log_file(sample(folder=Path(tmp)))
    return StageRun(result, tracker.run_id, checkpoint_dir)


def _partitioned(model: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitioned ``model``'s parameters over the ranks."""
    return any(is_partitioned(p) for p in model.parameters())


def _sample(
    model: WorldModel,
    *,
    vae: CausalVideoVAE,
    text_encoder: TextEncoder,
    data: Mixture,
    cfg: TrainConfig,
    timesteps: list[float],
    folder: Path,
) -> Path:
    """The end-of-stage sample video, written into ``folder``.

    Under ZeRO-3 every rank calls this, in the same order: the model's forward gathers each module's
    partitioned parameters with a collective, so rank 0 alone would wait forever. All ranks run the
    same rollout (same clip, same seed), one layer's parameters gathered at a time as in training —
    which also holds at a14b, where a full copy of the model would not fit on one rank — and only rank
    0 logs its video. Under ZeRO 0–2 every rank holds the full weights and rank 0 samples alone.
    Stage 0 (the VAE) shows a reconstruction instead: the clip beside the VAE's encode → decode.
    The clip is the data's first, read after the last checkpoint (so not in the stage's lineage).
    """
    clip = data.first()
    path = folder / f"sample_{cfg.stage.value}.mp4"
    if cfg.stage is Stage.vae:
        return reconstruction_video(vae, clip=clip, height=cfg.height, width=cfg.width, path=path)
    return sample_video(
        model,
        vae=vae,
        text_encoder=text_encoder,
        clip=clip,
        height=cfg.height,
        width=cfg.width,
        path=path,
        seed=cfg.seed,
        timesteps=timesteps,
    )


CHAIN = (Stage.vae, Stage.action, Stage.instruction, Stage.distill, Stage.long)


def run_chain(
    *,
    data: str | Sequence[str | DataSource],
    out: str | Path,
    scale: str = "tiny",
    track: bool = True,
    settings: Settings | None = None,
    configs: dict[Stage, TrainConfig] | None = None,
    stages: tuple[Stage, ...] = CHAIN,
    long_data: str | Sequence[str | DataSource] | None = None,
    on_stage: Callable[[Stage, StageRun], None] | None = None,
) -> dict[Stage, StageRun]:
    """Stages 0 → 4 (or ``stages``), each initialised from the previous one's checkpoint
    (``out/<stage>/``), on ``data`` — stage 4 on ``long_data`` when given (its clips are long)."""
    from worldloop.model.train.config import stage_preset

    runs: dict[Stage, StageRun] = {}
    previous: Path | None = None
    for stage in stages:
        cfg = (configs or {}).get(stage) or stage_preset(stage, scale=scale)
        stage_data = long_data if stage is Stage.long and long_data is not None else data
        run = run_stage(
            cfg, data=stage_data, out=Path(out) / stage.value, init=previous, track=track, settings=settings
        )
        runs[stage] = run
        previous = run.checkpoint_dir
        if on_stage:
            on_stage(stage, run)
    return runs
