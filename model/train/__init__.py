"""Training (DESIGN.md §6): stage configs here, the one loop in :mod:`.loop`, one objective per stage in
:mod:`.objectives`."""

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
