"""Load what a model URI names into a ready-to-stream stack: world model, VAE and text encoder.

* ``preset:NAME`` — random weights of a preset (tests, baselines: what an untrained model scores);
* a training output folder or one of its checkpoints, local or ``s3://`` — the weights of the latest
  checkpoint (or that one), with the preset, seed and resolution it was trained with;
* ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` — a registered MLflow model version
  (:mod:`worldloop.components.registry`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from worldloop.components.training.run import CheckpointMirror, build_models
from worldloop.model import WorldModel, load_preset
from worldloop.model.text import TextEncoderConfig, build_text_encoder
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.checkpoint import latest_checkpoint, load_checkpoint
from worldloop.model.vae import CausalVideoVAE

from worldloop import storage
from worldloop.settings import Settings, get_settings


@dataclass
class ModelStack:
    uri: str
    preset: str
    model: WorldModel
    vae: CausalVideoVAE
    text_encoder: TextEncoder
    trained_size: tuple[int, int] | None  # (height, width) of training; None for random weights
    checkpoint: str | None


def _text_encoder(dim: int) -> TextEncoder:
    encoder = build_text_encoder(TextEncoderConfig(kind="minilm"))
    if encoder.dim != dim:
        raise ValueError(f"text encoder width {encoder.dim} != model text_dim {dim}")
    return encoder


def checkpoint_folder(path: Path) -> Path:
    """``path`` itself when it is a checkpoint, else the latest checkpoint under it."""
    if (path / "model.safetensors").is_file() and (path / "state.json").is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: not a checkpoint and no 'latest' checkpoint under it")
    return found


def load_model(uri: str, *, settings: Settings | None = None, seed: int = 0) -> ModelStack:
    settings = settings or get_settings()
    if uri.startswith("preset:"):
        name = uri.removeprefix("preset:")
        model, vae = build_models(load_preset(name), seed=seed)
        return ModelStack(uri, name, model.eval(), vae.eval(), _text_encoder(model.cfg.text_dim), None, None)
    if uri.startswith("models:/"):
        from worldloop.components.registry import download_checkpoint

        folder = download_checkpoint(uri, settings=settings)  # the version's files, cached under home
    elif storage.scheme_of(uri) is not storage.Scheme.local:
        folder = checkpoint_folder(CheckpointMirror(uri, settings=settings).pull())  # the latest one
    else:
        local = storage.as_local_path(uri)
        if not local.exists():
            raise FileNotFoundError(f"--model {uri}: no such checkpoint folder")
        folder = checkpoint_folder(local)
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    config = state.get("config")
    if not isinstance(config, dict) or "model_preset" not in config:
        raise ValueError(
            f"{folder}/state.json has no training config (model_preset): not a worldloop checkpoint"
        )
    preset, train_seed = str(config["model_preset"]), int(config.get("seed", 0))
    model, vae = build_models(load_preset(preset), seed=train_seed)  # the VAE of training, exactly
    load_checkpoint(folder, model=model, optimizer=None, ema=None)
    size = (int(config.get("height", 0)), int(config.get("width", 0)))
    return ModelStack(
        uri, preset, model.eval(), vae.eval(), _text_encoder(model.cfg.text_dim), size, str(folder)
    )
