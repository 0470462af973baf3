"""Recommended hyper-parameters for training the causal VAE (DESIGN.md §5.1), as typed config.

The trainer that runs the VAE stage reads a :class:`VAETrainConfig`; :func:`tiny_vae_recipe` is the
recipe measured on a 2-core CPU by ``benchmarks/bench_vae_recipes.py`` for :func:`tiny_vae`. Steps
are counted in optimiser steps, not seconds, so a run is reproducible from its seed on any machine.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VAETrainConfig(BaseModel):
    """One VAE training run: optimiser, schedule, batches, and loss weights.

    Two phases share one learning-rate schedule: ``image_steps`` steps on single frames (the
    first-frame path, which every clip shares: the first frame is encoded alone), then clips of
    ``num_frames`` frames up to ``num_steps`` steps in all.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(..., gt=0, description="Peak AdamW learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    warmup_steps: int = Field(..., ge=0, description="Linear warm-up from 0 to ``lr``.")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="After warm-up: cosine decay to ``min_lr_ratio·lr`` at the last step, or flat."
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Floor of the cosine decay, times ``lr``.")
    num_steps: int = Field(..., ge=1, description="Optimiser steps in all (image phase included).")
    image_steps: int = Field(0, ge=0, description="Leading steps on single frames (first-frame path).")
    image_batch_size: int = Field(8, ge=1, description="Frames per step in the image phase.")
    batch_size: int = Field(..., ge=1, description="Clips per step in the clip phase.")
    num_frames: int = Field(..., ge=1, description="Frames per training clip: 1 + 4·k (first frame alone).")
    pixel_loss: Literal["l1", "mse"] = Field("l1", description="Per-pixel reconstruction term.")
    ssim_weight: float = Field(0.0, ge=0, description="Weight of 1 − SSIM (structure, sharp edges).")
    kl_weight: float = Field(1e-6, ge=0, description="Weight of the KL to N(0, I) (keeps latents tame).")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")

    @model_validator(mode="after")
    def _check(self) -> VAETrainConfig:
        if self.image_steps >= self.num_steps:
            raise ValueError(
                f"image_steps ({self.image_steps}) must leave clip steps before num_steps ({self.num_steps})"
            )
        if self.warmup_steps >= self.num_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below num_steps ({self.num_steps})")
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 1 + 4·k for the ×4 temporal VAE, got {self.num_frames}")
        return self

    def lr_at(self, step: int) -> float:
        """Learning rate for optimiser step ``step`` (0-based): warm-up, then cosine or flat."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.num_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.min_lr_ratio
        return self.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    def frames_at(self, step: int) -> int:
        """Frames per sample at ``step``: 1 during the image phase, then ``num_frames``."""
        return 1 if step < self.image_steps else self.num_frames

    def batch_at(self, step: int) -> int:
        """Samples per step at ``step``."""
        return self.image_batch_size if step < self.image_steps else self.batch_size


def tiny_vae_recipe() -> VAETrainConfig:
    """The recipe for :func:`~worldloop.model.vae.config.tiny_vae` (``benchmarks/bench_vae_recipes.py``).

    AdamW at 5e-4 (2e-3 measured unstable: 19.5 vs 23.1 dB overfitting four frames in 300 steps),
    20 warm-up steps, cosine to 10%; batches of 2 × 9 frames (5 or 17 frames, and a single-frame
    phase first, measured within noise); L1 + 1e-6·KL. 600 steps ≈ 6 single-thread CPU-minutes.
    """
    return VAETrainConfig(
        lr=5e-4,
        warmup_steps=20,
        num_steps=600,
        image_steps=0,
        batch_size=2,
        num_frames=9,
        ssim_weight=0.0,
        kl_weight=1e-6,
    )
