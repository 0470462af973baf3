"""A stage-3 (distill) trainer of one generator step on a tiny random model, for tests that watch what
the causal student's rollouts do (their recaches) on a given dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from worldloop.data import Mixture
from worldloop.model import WorldModel, build_world_model, load_preset
from worldloop.model.text import HashingEncoder
from worldloop.model.train.config import CurriculumPhase, stage_preset
from worldloop.model.train.loop import build_trainer
from worldloop.model.vae import CausalVideoVAE


def one_step_distill(
    data: Mixture, checkpoint_dir: Path, *, frames: int, size: int
) -> tuple[Any, WorldModel, CausalVideoVAE, HashingEncoder]:
    """(trainer, student, vae, text encoder): one generator step with one critic step, batch 1."""
    cfg = stage_preset("distill")
    cfg = cfg.model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=frames, steps=1),),
            "height": size,
            "width": size,
            "batch_size": 1,
            # guidance on (tiny's preset has none), so the real score's unconditional branch runs too
            "distill": cfg.distill.model_copy(  # type: ignore[union-attr]
                update={"critic_steps_per_generator": 1, "guidance_scale": 3.0}
            ),
        }
    )
    torch.manual_seed(0)
    model = build_world_model(load_preset("tiny"))
    vae, encoder = CausalVideoVAE(model.cfg.vae), HashingEncoder(dim=384)
    trainer = build_trainer(
        cfg, model, vae=vae, text_encoder=encoder, data=data, checkpoint_dir=checkpoint_dir
    )
    return trainer, model, vae, encoder
