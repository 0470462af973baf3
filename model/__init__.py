"""The world model (DESIGN.md §5): configs, architecture, camera, text, VAE, diffusion, rollout.

Public entry points::

    cfg = load_preset("tiny")                       # or "small", "a14b"
    model = build_world_model(cfg, device="cpu")    # WorldModel: MoE experts + camera + interaction
    track = actions_to_camera(actions, width=W, height=H)
    rays = plucker_embedding(track.intrinsics, track.c2w, H, W)   # (F, 6, H, W)
    rollout = Rollout(model, vae=vae, text_encoder=encoder, height=H, width=W)

This package imports no ray, kfp, mlflow or serving code.
"""

from __future__ import annotations

import torch

from worldloop.model.arch.kv_cache import KVCache
from worldloop.model.arch.world_model import Conditioning, InstructionTurns, WorldModel, i2v_condition
from worldloop.model.camera.plucker import actions_to_camera, plucker_embedding
from worldloop.model.config import ModelConfig, a14b, load_preset, small, tiny
from worldloop.model.rollout import Rollout, StreamState


def build_world_model(
    cfg: ModelConfig, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> WorldModel:
    """Build :class:`WorldModel` for ``cfg`` on ``device`` (``"meta"`` builds shapes only, no memory)."""
    with torch.device(device):
        model = WorldModel(cfg)
    if dtype is not None:
        model = model.to(dtype)
    return model


__all__ = [
    "Conditioning",
    "InstructionTurns",
    "KVCache",
    "ModelConfig",
    "Rollout",
    "StreamState",
    "WorldModel",
    "a14b",
    "actions_to_camera",
    "build_world_model",
    "i2v_condition",
    "load_preset",
    "plucker_embedding",
    "small",
    "tiny",
]
