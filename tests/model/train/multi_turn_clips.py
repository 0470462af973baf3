"""A SynthWorld dataset whose clip holds two events in sequence (two instruction turns), for the
tests of multi-turn training: its windows, and the latent frames and blocks their turns fall in."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from worldloop.components.synthworld import EventKind, SynthConfig
from worldloop.components.synthworld.writer import write_dataset
from worldloop.data import Mixture
from worldloop.model import build_world_model, load_preset
from worldloop.model.text import HashingEncoder
from worldloop.model.train.config import CurriculumPhase, stage_preset
from worldloop.model.train.objectives.flow_matching import FlowMatchingObjective
from worldloop.model.train.windows import Window, cut_window
from worldloop.model.vae import CausalVideoVAE

SIZE, FRAMES = 32, 33
# A torch then night (or night then a torch): both need nothing placed in view, so every clip is
# stageable, and a torch is short enough that the night always follows it within 33 frames.
CFG = SynthConfig(
    size=SIZE,
    frames=FRAMES,
    map_cells=16,
    event_kinds=(EventKind.draw_torch, EventKind.night),
    multi_turn_probability=1.0,
    max_turns=2,
)


def two_turn_dataset(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    """A dataset of one SynthWorld clip with two events (the first seed that gives one)."""
    for seed in range(10):
        root = tmp_path_factory.mktemp(f"multi-turn-{seed}")
        if len(write_dataset(root, CFG, clips=1, seed=seed)[0].events) == 2:
            return Mixture.open(str(root))
    raise AssertionError("no two-event clip in 10 seeds")


def two_turn_window(data: Mixture, seed: int = 0) -> Window:
    """A whole-clip window of the dataset's two-event clip (its turns' forms drawn from ``seed``)."""
    order = data.order(frames=FRAMES, seed=0)
    for index in range(8):
        clip = data.load(order.locate(index))
        if len(clip.meta.events) == 2:
            return cut_window(
                clip, np.random.default_rng(seed), frames=FRAMES, height=SIZE, width=SIZE, long_prob=0.5
            )
    raise AssertionError("no two-turn clip in the order")


def instruction_objective(*, size: int, frames: int, **update: Any) -> FlowMatchingObjective:
    """Stage 2 on ``frames``-frame windows at ``size`` px with ``update`` applied to its preset: a seeded
    tiny model (heads drawn, so outputs differ), a random VAE and the hashing text encoder."""
    cfg = stage_preset("instruction").model_copy(
        update={
            "height": size,
            "width": size,
            "curriculum": (CurriculumPhase(frames=frames, steps=1),),
            **update,
        }
    )
    mcfg = load_preset("tiny")
    torch.manual_seed(0)
    model = build_world_model(mcfg)
    for expert in model.experts:  # the zero-initialised head would make every output equal
        torch.nn.init.normal_(expert.head.head.weight, std=0.05)
    return FlowMatchingObjective(
        cfg, model, vae=CausalVideoVAE(mcfg.vae), text_encoder=HashingEncoder(dim=mcfg.text_dim)
    )
