"""What every InterBench judge returns: six scores in [0, 1] per case (DESIGN.md §7)."""

from __future__ import annotations

from enum import Enum
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worldloop.components.evaluation.suite import InterBenchCase


class Dimension(str, Enum):
    """The paper's six InterBench dimensions (higher is better for all)."""

    trigger = "trigger"  # did the instructed interaction happen at all (0/1 per case → a rate)
    alignment = "alignment"  # does what happened match the instruction
    fluency = "fluency"  # is the transition smooth (no flicker, no jumps beyond the true motion)
    scope = "scope"  # does the change stay where it belongs (local events) / cover the frame (global)
    end_state = "end_state"  # does the end state persist to the last frame
    physics = "physics"  # does the change unfold plausibly (grows as the staged event does)


DIMENSIONS: tuple[Dimension, ...] = tuple(Dimension)


class CaseScores(BaseModel):
    """One case's scores; ``None`` where the judge cannot tell (say why in ``notes``)."""

    model_config = ConfigDict(extra="forbid")

    case: str
    category: str
    scores: dict[Dimension, float | None] = Field(description="Each in [0, 1], higher is better.")
    notes: list[str] = Field(default_factory=list)


class Judge(Protocol):
    """Scores one generated video (F, H, W, 3) uint8 RGB for one case."""

    name: str

    def score(self, case: InterBenchCase, video: np.ndarray) -> CaseScores: ...


def aggregate(results: list[CaseScores]) -> dict[str, float | None]:
    """Mean of each dimension over the cases that have it (``None`` if none do)."""
    out: dict[str, float | None] = {}
    for dim in DIMENSIONS:
        values = [r.scores.get(dim) for r in results]
        known = [v for v in values if v is not None]
        out[dim.value] = float(np.mean(known)) if known else None
    return out
