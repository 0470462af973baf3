"""Which :class:`~worldloop.serving.engine.VideoEngine` a replica runs: in-process for one device,
sequence-parallel Ray workers for ``sp`` > 1. Its own module so that neither engine imports the other."""

from __future__ import annotations

from worldloop.platform.uri import ModelURI
from worldloop.serving.config import EngineConfig
from worldloop.serving.engine import LocalEngine, VideoEngine
from worldloop.serving.workers import ShardedEngine


def build_engine(cfg: EngineConfig, *, model: ModelURI | None = None) -> VideoEngine:
    """The engine for ``cfg`` on ``model`` (default ``cfg.model``; the generator passes a pinned version)."""
    if cfg.sp == 1:
        return LocalEngine(cfg, model=model)
    return ShardedEngine(cfg, model=model)
