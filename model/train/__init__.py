"""Training configuration for the four stages (DESIGN.md §6); trainers live in components/training."""

from worldloop.model.train.config import (
    CurriculumPhase,
    DistillConfig,
    LongExtensionConfig,
    Stage,
    TrainConfig,
    stage_preset,
)

__all__ = [
    "CurriculumPhase",
    "DistillConfig",
    "LongExtensionConfig",
    "Stage",
    "TrainConfig",
    "stage_preset",
]
