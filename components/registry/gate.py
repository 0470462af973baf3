"""The InterBench promotion gate: a candidate may not score below the champion by more than the
tolerance on any of the six dimensions (DESIGN.md §8; dimensions as in DESIGN.md §7)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

DIMENSIONS = ("trigger", "alignment", "fluency", "scope", "end_state", "physics")  # judges.base.Dimension
_EPS = 1e-9  # a regression of exactly the tolerance passes despite float rounding


class DimensionCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: str
    candidate: float | None
    champion: float | None
    passed: bool
    why: str


class GateResult(BaseModel):
    """The verdict and, per dimension, the two scores and why the dimension passed or failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    passed: bool
    tolerance: float
    candidate_version: int
    champion_version: int | None
    checks: list[DimensionCheck] = Field(default_factory=list)
    reasons: list[str] = Field(description="Why it failed (every failing dimension), or why it passed.")


def _check(
    dim: str, cand: float | None, champ: float | None, tolerance: float, champion: int
) -> DimensionCheck:
    if champ is None:
        why = f"champion v{champion} has no {dim} score: nothing to regress against"
        return DimensionCheck(dimension=dim, candidate=cand, champion=champ, passed=True, why=why)
    if cand is None:
        why = f"{dim} has no score (champion v{champion}: {champ:.3f})"
        return DimensionCheck(dimension=dim, candidate=cand, champion=champ, passed=False, why=why)
    drop = champ - cand
    if drop > tolerance + _EPS:
        why = (
            f"{dim} {cand:.3f} is {drop:.3f} below champion v{champion}'s {champ:.3f} "
            f"(tolerance {tolerance:.3f})"
        )
        return DimensionCheck(dimension=dim, candidate=cand, champion=champ, passed=False, why=why)
    why = f"{dim} {cand:.3f} vs champion's {champ:.3f} (within tolerance {tolerance:.3f})"
    return DimensionCheck(dimension=dim, candidate=cand, champion=champ, passed=True, why=why)


def gate(
    candidate: int,
    scores: Mapping[str, float | None] | None,
    *,
    champion: int | None,
    champion_scores: Mapping[str, float | None] | None,
    tolerance: float,
) -> GateResult:
    """Gate version ``candidate`` (with InterBench ``scores``) against version ``champion``.

    Fails when the candidate was never evaluated or any dimension regresses by more than ``tolerance``;
    passes when there is no champion yet (nothing to regress against) or it has no scores.
    """
    common = {"tolerance": tolerance, "candidate_version": candidate, "champion_version": champion}
    if scores is None:
        why = f"v{candidate} has no InterBench scores (register it with its scores.json)"
        return GateResult(passed=False, reasons=[why], **common)
    if champion is None:
        return GateResult(passed=True, reasons=["no champion yet: nothing to regress against"], **common)
    if champion_scores is None:
        why = f"champion v{champion} has no InterBench scores: nothing to regress against"
        return GateResult(passed=True, reasons=[why], **common)
    checks = [_check(d, scores.get(d), champion_scores.get(d), tolerance, champion) for d in DIMENSIONS]
    failed = [c.why for c in checks if not c.passed]
    if failed:
        return GateResult(passed=False, checks=checks, reasons=failed, **common)
    why = f"no dimension more than {tolerance:.3f} below champion v{champion}"
    return GateResult(passed=True, checks=checks, reasons=[why], **common)
