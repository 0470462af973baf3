"""The model spec: everything needed to rebuild a checkpoint's model stack (DESIGN.md §6 stage 0).

A checkpoint folder holds ``spec.json`` beside its weights. Every loader (evaluation, registry,
serving, ``models:/`` URIs) rebuilds the world model, the VAE and the text encoder from the spec —
never from a preset name, which can change after the checkpoint was written — and samples with the
schedule the spec names (the distilled student's timesteps, when stage 3 wrote them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worldloop.model.arch.world_model import WorldModel
from worldloop.model.config import ModelConfig, load_preset
from worldloop.model.diffusion.schedule import few_step_timesteps
from worldloop.model.text.encoder import TextEncoderConfig, encoder_width
from worldloop.model.vae.autoencoder import CausalVideoVAE

SPEC_FILE = "spec.json"


class SamplingSchedule(BaseModel):
    """How a block is denoised: explicit timesteps (a distilled student's), or the default few-step
    expert-aligned list for ``num_steps`` and ``shift``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shift: float = Field(5.0, gt=0.0, description="Timestep shift of the flow-matching schedule.")
    num_steps: int = Field(
        4, ge=1, le=1000, description="Steps of the default list (ignored with timesteps)."
    )
    timesteps: tuple[float, ...] | None = Field(
        None, description="Explicit strictly decreasing timesteps in (0, 1000] (stage 3 writes these)."
    )

    @field_validator("timesteps")
    @classmethod
    def _decreasing(cls, ts: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if ts is None:
            return ts
        if not ts:
            raise ValueError("timesteps must not be empty (use null for the default list)")
        if any(not 0.0 < t <= 1000.0 for t in ts) or any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
            raise ValueError(f"timesteps must decrease strictly within (0, 1000], got {list(ts)}")
        return ts

    def resolve(self, model: ModelConfig) -> list[float]:
        """The timesteps to run for ``model`` (expert-aligned when it has two experts)."""
        if self.timesteps is not None:
            return list(self.timesteps)
        boundary = model.boundary if model.num_experts == 2 else None
        return few_step_timesteps(self.num_steps, shift=self.shift, boundary=boundary)


class ModelSpec(BaseModel):
    """Model, VAE (inside ``model.vae``), text encoder, sampling schedule, trained size and fps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = Field(1, description="Spec format version.")
    model: ModelConfig = Field(description="The world model's architecture, VAE included.")
    text_encoder: TextEncoderConfig = Field(description="The frozen text encoder the model was trained with.")
    schedule: SamplingSchedule = Field(default_factory=SamplingSchedule, description="Block sampling.")
    height: int = Field(gt=0, description="Trained frame height (pixels).")
    width: int = Field(gt=0, description="Trained frame width (pixels).")
    fps: float = Field(16.0, gt=0.0, description="Frame rate of the training data.")

    def with_schedule(self, schedule: SamplingSchedule) -> ModelSpec:
        return self.model_copy(update={"schedule": schedule})


def preset_text_encoder(name: str, *, t5_path: Path | None = None) -> TextEncoderConfig:
    """The text encoder preset ``name`` trains with: ``tiny`` the bundled MiniLM; ``small`` and ``a14b``
    the umT5 in ``t5_path`` (a local folder; the settings' ``t5_path``) or, without one, the bundled
    MiniLM behind a learned projection to their 4096-wide text input — so every preset runs offline."""
    load_preset(name)  # a clear error for an unknown name
    if name != "tiny" and t5_path is not None:
        return TextEncoderConfig(kind="t5", path=t5_path, max_length=512)
    return TextEncoderConfig(kind="minilm")


def preset_spec(
    name: str,
    *,
    height: int,
    width: int,
    fps: float = 16.0,
    text_encoder: TextEncoderConfig | None = None,
) -> ModelSpec:
    """The spec of a fresh ``name`` preset model trained at ``height × width`` with ``text_encoder``
    (default: :func:`preset_text_encoder`); a text encoder whose width differs from the preset's
    ``text_dim`` gets a learned projection (``ModelConfig.text_input_dim``)."""
    encoder = text_encoder or preset_text_encoder(name)
    width_in = encoder_width(encoder)
    model = load_preset(name)
    model = model.model_copy(update={"text_input_dim": None if width_in == model.text_dim else width_in})
    return ModelSpec(model=model, text_encoder=encoder, height=height, width=width, fps=fps)


def write_spec(folder: str | Path, spec: ModelSpec) -> Path:
    """Write ``spec.json`` into ``folder`` (atomically: a temporary file renamed into place)."""
    path = Path(folder) / SPEC_FILE
    tmp = path.with_name(f".{SPEC_FILE}.{os.getpid()}")
    tmp.write_text(spec.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_spec(folder: str | Path) -> ModelSpec:
    """The spec of the checkpoint in ``folder``; a clear error when it has none or it is invalid."""
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {SPEC_FILE}; the checkpoint does not say how to rebuild its model "
            "(written before model specs existed): train it again with this version"
        )
    try:
        return ModelSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as err:
        raise ValueError(f"{path}: not a valid model spec: {err}") from None


def build_modules(
    spec: ModelSpec, *, seed: int | None = None, device: torch.device | str = "cpu"
) -> tuple[WorldModel, CausalVideoVAE]:
    """The world model and the VAE ``spec`` describes, freshly initialised (seeded with ``seed`` when
    given; ``device="meta"`` builds shapes only). Loaders then fill them from the checkpoint's files."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = WorldModel(spec.model)
        vae = CausalVideoVAE(spec.model.vae)
    return model, vae
