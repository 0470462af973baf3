"""``worldloop train``: one stage on SynthWorld or curated data, tracked in MLflow, resumable."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from worldloop.components.curation.dataset import iter_clips
from worldloop.components.training.sample import sample_video
from worldloop.model import ModelConfig, WorldModel, build_world_model, load_preset
from worldloop.model.text import TextEncoderConfig, build_text_encoder
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.checkpoint import LATEST, is_partitioned, latest_checkpoint, load_checkpoint
from worldloop.model.train.config import Stage, TrainConfig
from worldloop.model.train.data import TrainClip, clip_from_mp4_bytes, load_synthworld
from worldloop.model.train.distill_trainer import DistillTrainer
from worldloop.model.train.long_trainer import LongExtensionTrainer
from worldloop.model.train.trainer import FlowMatchingTrainer, TrainResult
from worldloop.model.vae import CausalVideoVAE

from worldloop import storage
from worldloop.settings import Settings, get_settings

log = logging.getLogger(__name__)


def load_training_clips(uri: str, *, settings: Settings | None = None) -> list[TrainClip]:
    """A curated dataset (has ``manifest.jsonl``) or a SynthWorld labelled folder."""
    if storage.exists(storage.join(uri, "manifest.jsonl"), settings=settings):
        return [
            clip_from_mp4_bytes(
                clip.clip_id,
                data,
                intrinsics=clip.camera.intrinsics,
                c2w=clip.camera.c2w,
                caption_long=clip.captions.long,
                caption_short=clip.captions.short,
                interaction=clip.interaction.text if clip.interaction else None,
            )
            for clip, data in iter_clips(uri, settings=settings)
        ]
    return load_synthworld(storage.as_local_path(uri))


def local_artifacts(settings: Settings) -> str:
    """Where the local profile keeps MLflow artifacts: beside the sqlite store under home."""
    return (settings.home / "mlartifacts").resolve().as_uri()


class CheckpointMirror:
    """Checkpoints of an ``s3://`` output: trained into a local folder, each one uploaded as it is
    written (files first, then the ``latest`` pointer, so a reader never follows it to a partial
    upload), and the latest one downloaded before a run starts so the run resumes from it."""

    def __init__(self, uri: str, *, settings: Settings) -> None:
        self.uri, self.settings = uri.rstrip("/"), settings
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.local = (settings.home / "checkpoint-cache" / digest).resolve()

    def pull(self, into: Path | None = None) -> Path:
        """Download the latest checkpoint (if any) into ``into`` (default: the mirror folder)."""
        local = into or self.local
        local.mkdir(parents=True, exist_ok=True)
        pointer = storage.join(self.uri, LATEST)
        if storage.exists(pointer, settings=self.settings):
            name = storage.read_bytes(pointer, settings=self.settings).decode().strip()
            for uri in storage.list_uris(storage.join(self.uri, name), settings=self.settings):
                target = local / name / uri.rsplit("/", 1)[1]
                storage.download_file(uri, target, settings=self.settings)
            (local / LATEST).write_text(name + "\n")
        return local

    def push(self, folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            storage.upload_file(path, storage.join(self.uri, folder.name, path.name), settings=self.settings)
        storage.write_bytes(
            storage.join(self.uri, LATEST), (folder.name + "\n").encode(), settings=self.settings
        )


def _local_checkpoints(
    uri: str | Path, settings: Settings, *, mirror: bool
) -> tuple[Path, CheckpointMirror | None]:
    if isinstance(uri, Path) or storage.scheme_of(uri) is storage.Scheme.local:
        return storage.as_local_path(str(uri)), None
    m = CheckpointMirror(uri, settings=settings)
    return (m.pull() if mirror else m.local), m


def build_models(mcfg: ModelConfig, *, seed: int) -> tuple[WorldModel, CausalVideoVAE]:
    """The world model (initial weights) and the VAE of a run with ``seed``.

    The VAE is not trained by any stage yet: it is frozen at its seeded initialisation, so every
    consumer of a checkpoint (the next stage, evaluation, serving) must rebuild it exactly like this.
    """
    torch.manual_seed(seed)
    model = build_world_model(mcfg)
    return model, CausalVideoVAE(mcfg.vae)


@dataclass(frozen=True)
class StageRun:
    result: TrainResult
    mlflow_run_id: str | None
    checkpoint_dir: Path


def run_stage(
    cfg: TrainConfig,
    *,
    data: str,
    out: str | Path,
    init: str | Path | None = None,
    max_steps: int | None = None,
    track: bool = True,
    parent_run_id: str | None = None,
    settings: Settings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> StageRun:
    settings = settings or get_settings()
    clips = load_training_clips(data, settings=settings)
    mcfg = load_preset(cfg.model_preset)
    model, vae = build_models(mcfg, seed=cfg.seed)
    checkpoint_dir, mirror = _local_checkpoints(out, settings, mirror=True)
    if init is not None and latest_checkpoint(checkpoint_dir) is None:
        init_dir, init_mirror = _local_checkpoints(init, settings, mirror=False)
        if init_mirror is not None:
            init_dir = init_mirror.pull(init_dir.with_name(init_dir.name + "-init"))
        found = latest_checkpoint(init_dir)
        if found is None:
            raise FileNotFoundError(f"--init {init}: no checkpoint (no 'latest' file)")
        load_checkpoint(found, model=model, optimizer=None, ema=None)
        log.info("initialised from %s", found)
    text_encoder = build_text_encoder(TextEncoderConfig(kind="minilm"))
    if text_encoder.dim != mcfg.text_dim:
        raise ValueError(f"text encoder width {text_encoder.dim} != model text_dim {mcfg.text_dim}")
    tracker = None
    if track and int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        from worldloop.components.training.tracking import StageTracker

        tracker = StageTracker(
            tracking_uri=settings.resolved_mlflow_uri,
            experiment="worldloop-training",
            run_name=f"stage-{cfg.stage.value}",
            params={"config": cfg.model_dump(mode="json"), "data": data, "clips": len(clips)},
            parent_run_id=parent_run_id,
            artifact_location=None if settings.mlflow_uri else local_artifacts(settings),
        )
    trainer_cls = {
        Stage.action: FlowMatchingTrainer,
        Stage.instruction: FlowMatchingTrainer,
        Stage.distill: DistillTrainer,
        Stage.long: LongExtensionTrainer,
    }[cfg.stage]
    trainer = trainer_cls(
        cfg,
        model,
        vae=vae,
        text_encoder=text_encoder,
        clips=clips,
        checkpoint_dir=checkpoint_dir,
        on_metrics=tracker.log_metrics if tracker else None,
        on_progress=on_progress,
        on_checkpoint=mirror.push if mirror else None,
    )
    # the end-of-stage sample (what the stage generates now): rank 0 logs it
    sample = functools.partial(_sample, model, vae=vae, text_encoder=text_encoder, clip=clips[0], cfg=cfg)
    if tracker is None:
        result = trainer.run(max_steps=max_steps)
        if track and result.losses and _partitioned(model):  # a ZeRO-3 rank > 0: rank 0 samples now
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
    clip: TrainClip,
    cfg: TrainConfig,
    folder: Path,
) -> Path:
    """The end-of-stage sample video, written into ``folder``.

    Under ZeRO-3 every rank calls this, in the same order: the model's forward gathers each module's
    partitioned parameters with a collective, so rank 0 alone would wait forever. All ranks run the
    same rollout (same clip, same seed), one layer's parameters gathered at a time as in training —
    which also holds at a14b, where a full copy of the model would not fit on one rank — and only rank
    0 logs its video. Under ZeRO 0–2 every rank holds the full weights and rank 0 samples alone.
    """
    return sample_video(
        model,
        vae=vae,
        text_encoder=text_encoder,
        clip=clip,
        height=cfg.height,
        width=cfg.width,
        path=folder / f"sample_{cfg.stage.value}.mp4",
        seed=cfg.seed,
    )


CHAIN = (Stage.action, Stage.instruction, Stage.distill, Stage.long)


def run_chain(
    *,
    data: str,
    out: str | Path,
    scale: str = "tiny",
    track: bool = True,
    settings: Settings | None = None,
    configs: dict[Stage, TrainConfig] | None = None,
    on_stage: Callable[[Stage, StageRun], None] | None = None,
) -> dict[Stage, StageRun]:
    """Stages 1 → 4, each initialised from the previous one's checkpoint (``out/<stage>/``)."""
    from worldloop.model.train.config import stage_preset

    runs: dict[Stage, StageRun] = {}
    previous: Path | None = None
    for stage in CHAIN:
        cfg = (configs or {}).get(stage) or stage_preset(stage, scale=scale)
        run = run_stage(
            cfg, data=data, out=Path(out) / stage.value, init=previous, track=track, settings=settings
        )
        runs[stage] = run
        previous = run.checkpoint_dir
        if on_stage:
            on_stage(stage, run)
    return runs
