"""Load what a model URI names into a ready-to-stream stack: world model, VAE, text encoder and the
sampling schedule, all rebuilt from the checkpoint's spec (ARCHITECTURE.md, platform layer).

* ``preset:NAME`` — random weights of a preset at its default size (tests, the random-weight baseline);
* a checkpoint (a training output or one ``step-…`` folder; local or ``s3://``) — its weights, its VAE
  and its ``spec.json``;
* ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` — the registered version's checkpoint, resolved
  once and pinned (:attr:`ModelStack.version`).

Every consumer — InterBench, the quality ladder, the registry, serving — loads through
:func:`load_model_stack`, so none of them re-resolves a URI or guesses a preset.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from worldloop.model.arch.world_model import WorldModel
from worldloop.model.rollout import Rollout
from worldloop.model.spec import ModelSpec, build_modules, preset_spec, preset_text_encoder, read_spec
from worldloop.model.text.encoder import TextEncoder, build_text_encoder
from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.platform.checkpoints import local_checkpoint
from worldloop.platform.registry import download_version, pin_version
from worldloop.platform.uri import ModelKind, ModelURI
from worldloop.settings import Settings, get_settings

log = logging.getLogger(__name__)

# The size a preset model streams at when nothing was trained: tiny is a CPU model.
PRESET_SIZES = {"tiny": (64, 64)}
DEFAULT_SIZE = (480, 832)


@dataclass
class ModelStack:
    """A model ready to stream: eval-mode modules on the host in fp32 (callers move and cast them)."""

    uri: ModelURI  # what was asked for
    version: int | None  # the registered version a models:/ URI resolved to
    spec: ModelSpec
    model: WorldModel
    vae: CausalVideoVAE
    text_encoder: TextEncoder
    checkpoint: Path | None  # the checkpoint folder read; None for random weights
    stage: str | None = None  # the training stage that wrote the checkpoint (state.json)

    @property
    def preset(self) -> str:
        """The architecture's preset name (a label: the spec, not the name, defines the model)."""
        return self.spec.model.name

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    @property
    def timesteps(self) -> list[float]:
        """The block sampler's timesteps (a distilled student's own, when its spec has them)."""
        return self.spec.schedule.resolve(self.spec.model)

    def rollout(self, *, height: int, width: int, seed: int | None = None) -> Rollout:
        """The serving :class:`Rollout` of this stack at ``height × width``, sampling with the spec's
        :attr:`timesteps`; ``seed`` seeds its noise (a fresh generator per call)."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return Rollout(
            self.model,
            vae=self.vae,
            text_encoder=self.text_encoder,
            height=height,
            width=width,
            timesteps=self.timesteps,
            generator=generator,
        )


def text_encoder_for(spec: ModelSpec, *, device: torch.device | str = "cpu") -> TextEncoder:
    """The frozen text encoder ``spec`` names, checked against the model's text width."""
    encoder = build_text_encoder(spec.text_encoder, device=device)
    if encoder.dim != spec.model.text_encoder_dim:
        raise ValueError(
            f"text encoder {spec.text_encoder.kind} is {encoder.dim} wide but the model takes "
            f"{spec.model.text_encoder_dim}-wide text features"
        )
    return encoder


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: no {path.name} (the checkpoint is incomplete)")
    missing, unexpected = module.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit the spec's model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _checkpoint_folder(uri: ModelURI, settings: Settings) -> tuple[Path, int | None]:
    if uri.kind is ModelKind.registry:
        pinned = pin_version(uri, settings=settings)
        return download_version(pinned, settings=settings), pinned.version
    assert uri.location is not None
    return local_checkpoint(uri.location, settings=settings), None


def load_model_stack(
    uri: ModelURI | str,
    *,
    settings: Settings | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ModelStack:
    """The stack ``uri`` names. ``seed`` seeds a preset's random weights; ``device="meta"`` builds a
    preset's shapes only (checking that a large stack is buildable without its memory)."""
    uri = ModelURI.parse(uri)
    settings = settings or get_settings()
    if uri.kind is ModelKind.preset:
        assert uri.preset is not None
        height, width = PRESET_SIZES.get(uri.preset, DEFAULT_SIZE)
        encoder = preset_text_encoder(uri.preset, t5_path=settings.t5_path)
        spec = preset_spec(uri.preset, height=height, width=width, text_encoder=encoder)
        model, vae = build_modules(spec, seed=seed, device=device)
        return ModelStack(uri, None, spec, model.eval(), vae.eval(), text_encoder_for(spec), None)
    folder, version = _checkpoint_folder(uri, settings)
    spec = read_spec(folder)
    model, vae = build_modules(spec, seed=seed)
    if (folder / "model.safetensors").is_file():
        _load_weights(model, folder / "model.safetensors")
    else:  # stage 0 trains the VAE alone: its world model is the seeded initial one
        log.info("%s holds a VAE and no world model (stage 0): the DiT keeps random weights", folder)
    _load_weights(vae, folder / "vae.safetensors")
    log.info("loaded %s from %s (%s at %dx%d)", uri, folder, spec.model.name, spec.height, spec.width)
    stage = _stage_of(folder)
    return ModelStack(uri, version, spec, model.eval(), vae.eval(), text_encoder_for(spec), folder, stage)


def _stage_of(folder: Path) -> str | None:
    """The training stage that wrote checkpoint ``folder`` (``state.json``'s config), if it says."""
    try:
        config = json.loads((folder / "state.json").read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError):
        return None
    stage = config.get("stage") if isinstance(config, dict) else None
    return stage if isinstance(stage, str) else None
