"""What every InterBench judge returns: six scores in [0, 1] per case (DESIGN.md §7) and, for a
multi-turn case, the six per turn plus whether each turn's state persists through the later turns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, Protocol

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


class TurnScores(BaseModel):
    """One turn of a multi-turn case."""

    model_config = ConfigDict(extra="forbid")

    scores: dict[Dimension, float | None] = Field(description="The six, over the turn's own frames.")
    persistence: float | None = Field(
        None,
        description="In [0, 1]: how far the state this turn produced is still there after the later turns "
        "are issued. None for the last turn (nothing follows it) or where the judge cannot tell.",
    )


class CaseScores(BaseModel):
    """One case's scores; ``None`` where the judge cannot tell (say why in ``notes``)."""

    model_config = ConfigDict(extra="forbid")

    case: str
    category: str
    scores: dict[Dimension, float | None] = Field(
        description="Each in [0, 1], higher is better; a multi-turn case's are the means over its turns."
    )
    notes: list[str] = Field(default_factory=list)
    turns: list[TurnScores] = Field(
        default_factory=list, description="Multi-turn cases: each turn, in order."
    )

    @classmethod
    def of_turns(cls, case: str, category: str, judged: Sequence[tuple[TurnScores, list[str]]]) -> CaseScores:
        """A multi-turn case's scores from each turn's and its notes: the six are the means over the turns,
        and every note says which turn it is about."""
        turns = [t for t, _ in judged]
        notes = [f"turn {n}: {note}" for n, (_, said) in enumerate(judged, start=1) for note in said]
        return cls(case=case, category=category, scores=mean_scores([t.scores for t in turns]), notes=notes,
                   turns=turns)  # fmt: skip

    @property
    def persistence(self) -> float | None:
        """Mean persistence over the turns that have one (None for a single-turn case)."""
        known = [t.persistence for t in self.turns if t.persistence is not None]
        return float(np.mean(known)) if known else None


class Judge(Protocol):
    """Scores one generated video (F, H, W, 3) uint8 RGB for one case."""

    name: str

    def score(self, case: InterBenchCase, video: np.ndarray) -> CaseScores: ...


def mean_scores(scores: Sequence[Mapping[Dimension, float | None]]) -> dict[Dimension, float | None]:
    """Per dimension, the mean of the known values (``None`` if none is known)."""
    out: dict[Dimension, float | None] = {}
    for dim in DIMENSIONS:
        known = [v for v in (s.get(dim) for s in scores) if v is not None]
        out[dim] = float(np.mean(known)) if known else None
    return out


def aggregate(results: list[CaseScores]) -> dict[str, float | None]:
    """Mean of each dimension over the cases that have it (``None`` if none do)."""
    return {dim.value: value for dim, value in mean_scores([r.scores for r in results]).items()}


def aggregate_turns(results: list[CaseScores]) -> dict[str, Any] | None:
    """The multi-turn cases among ``results``: their count, per turn number the six dimensions' means
    (``"1"``, ``"2"``, …), and persistence — the mean over every turn that has one, and per turn number
    (``persistence_by_turn``). None without multi-turn cases."""
    multi = [r for r in results if r.turns]
    if not multi:
        return None
    longest = max(len(r.turns) for r in multi)
    turns = {
        str(n + 1): {
            dim.value: value
            for dim, value in mean_scores([r.turns[n].scores for r in multi if len(r.turns) > n]).items()
        }
        for n in range(longest)
    }
    kept = {
        str(n + 1): [v for r in multi if len(r.turns) > n and (v := r.turns[n].persistence) is not None]
        for n in range(longest - 1)
    }
    every = [v for values in kept.values() for v in values]
    return {
        "cases": len(multi),
        "turns": turns,
        "persistence": float(np.mean(every)) if every else None,
        "persistence_by_turn": {n: float(np.mean(v)) if v else None for n, v in kept.items()},
    }
