"""The promotion gate (DESIGN.md §8): what a candidate must show before it may become champion.

1. **Measured.** InterBench scores (the six dimensions of DESIGN.md §7), and — unless no baseline
   metric is configured — the quality ladder (``worldloop eval quality``).
2. **Better than nothing.** On each configured baseline metric (default: rollout PSNR over the first
   two blocks and the direction checks) the candidate beats *both* baselines measured
   in the same run: random weights of its own spec, and the true first frame repeated. A model that
   does not beat "repeat the first frame" has learnt nothing worth serving.
3. **Absolute floors.** Configured minimums on any InterBench dimension or quality metric (for the
   lower-is-better camera errors the floor is a ceiling).
4. **No regression.** No InterBench dimension more than the tolerance below the champion's — compared
   only when both were scored on the same suite, judge and number of cases; otherwise the gate refuses
   and says why, instead of comparing numbers that do not measure the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

DIMENSIONS = ("trigger", "alignment", "fluency", "scope", "end_state", "physics")  # judges.base.Dimension
BASELINES = ("random", "frozen")  # the quality ladder's baselines (components/evaluation/quality)
LOWER_IS_BETTER = ("camera.",)  # metric prefixes where a smaller number is better (errors in degrees)
_EPS = 1e-9  # a regression of exactly the tolerance passes despite float rounding
Quality = Mapping[str, Mapping[str, float | None]]  # contestant → metric → value


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


class DimensionCheck(BaseModel):
    """One comparison the gate made: a dimension against the champion, a metric against a baseline,
    or a metric against its floor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: str
    candidate: float | None
    champion: float | None  # the other side of the comparison (champion, baseline or floor)
    passed: bool
    why: str


class GateResult(BaseModel):
    """The verdict and, per comparison, the two numbers and why it passed or failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    passed: bool
    tolerance: float
    candidate_version: int
    champion_version: int | None
    checks: list[DimensionCheck] = Field(default_factory=list)
    reasons: list[str] = Field(description="Why it failed (every failing check), or why it passed.")


class GatePolicy(BaseModel):
    """The settings the gate applies (``WORLDLOOP_GATE_*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerance: float = Field(0.02, ge=0.0, le=1.0)
    floors: dict[str, float] = Field(default_factory=dict)
    baseline_metrics: tuple[str, ...] = ()


class Evidence(BaseModel):
    """What a version was measured with: InterBench scores and where they come from, and the quality
    ladder's numbers for the model and its baselines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    scores: dict[str, float | None] | None = None
    setup: dict[str, str] = Field(default_factory=dict)  # suite, judge, cases
    quality: dict[str, dict[str, float | None]] | None = None


def _regression(
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


def _beats(metric: str, value: float, other: float) -> bool:
    return value < other if lower_is_better(metric) else value > other


def baseline_checks(quality: Quality, metrics: Sequence[str]) -> list[DimensionCheck]:
    """The candidate's value of each metric against each baseline's (strictly better; a baseline the
    metric does not apply to — n/a — is nothing to beat)."""
    checks = []
    model = quality.get("model", {})
    for metric in metrics:
        value = model.get(metric)
        for baseline in BASELINES:
            other = quality.get(baseline, {}).get(metric)
            name = f"{metric} vs {baseline}"
            if value is None:
                why = f"{metric} was not measured for the model"
                checks.append(
                    DimensionCheck(dimension=name, candidate=None, champion=other, passed=False, why=why)
                )
            elif other is None:
                why = f"{metric} {value:.3f}: n/a for the {baseline} baseline"
                checks.append(
                    DimensionCheck(dimension=name, candidate=value, champion=None, passed=True, why=why)
                )
            else:
                ok = _beats(metric, value, other)
                verb = "beats" if ok else "does not beat"
                why = f"{metric} {value:.3f} {verb} the {baseline} baseline's {other:.3f}"
                checks.append(
                    DimensionCheck(dimension=name, candidate=value, champion=other, passed=ok, why=why)
                )
    return checks


def floor_checks(evidence: Evidence, floors: Mapping[str, float]) -> list[DimensionCheck]:
    """Each floor against the candidate's InterBench dimension or quality metric of that name."""
    checks = []
    model = (evidence.quality or {}).get("model", {})
    for metric, floor in sorted(floors.items()):
        value = (evidence.scores or {}).get(metric) if metric in DIMENSIONS else model.get(metric)
        bound = "at most" if lower_is_better(metric) else "at least"
        if value is None:
            why = f"{metric} has no value to hold to its floor ({bound} {floor:g})"
            ok = False
        else:
            ok = value <= floor + _EPS if lower_is_better(metric) else value >= floor - _EPS
            why = f"{metric} {value:.3f} {'meets' if ok else 'misses'} its floor ({bound} {floor:g})"
        checks.append(
            DimensionCheck(dimension=f"{metric} floor", candidate=value, champion=floor, passed=ok, why=why)
        )
    return checks


def _measured(candidate: Evidence, policy: GatePolicy) -> list[str]:
    missing = []
    if candidate.scores is None:
        missing.append(f"v{candidate.version} has no InterBench scores (register it with its scores.json)")
    if policy.baseline_metrics and candidate.quality is None:
        missing.append(
            f"v{candidate.version} was not measured on the quality ladder (register it with its quality.json)"
        )
    return missing


def _incomparable(candidate: Evidence, champion: Evidence) -> str | None:
    if candidate.setup == champion.setup:
        return None

    def show(e: Evidence) -> str:
        return ", ".join(f"{k} {e.setup.get(k, '?')}" for k in ("suite", "judge", "cases"))

    return (
        f"v{candidate.version} was scored on {show(candidate)} but champion v{champion.version} on "
        f"{show(champion)}: not comparable; evaluate both on the same suite, judge and case count"
    )


def gate(candidate: Evidence, *, champion: Evidence | None, policy: GatePolicy) -> GateResult:
    """Gate ``candidate`` against ``champion`` (None: there is none yet) under ``policy``."""
    common = {
        "tolerance": policy.tolerance,
        "candidate_version": candidate.version,
        "champion_version": None if champion is None else champion.version,
    }
    missing = _measured(candidate, policy)
    if missing:
        return GateResult(passed=False, reasons=missing, **common)
    checks = baseline_checks(candidate.quality or {}, policy.baseline_metrics)
    checks += floor_checks(candidate, policy.floors)
    passed_why: list[str] = []
    if champion is None:
        passed_why.append("no champion yet: nothing to regress against")
    elif champion.scores is None:
        passed_why.append(
            f"champion v{champion.version} has no InterBench scores: nothing to regress against"
        )
    elif (why := _incomparable(candidate, champion)) is not None:
        return GateResult(passed=False, checks=checks, reasons=[why], **common)
    else:
        assert candidate.scores is not None
        checks += [
            _regression(
                d, candidate.scores.get(d), champion.scores.get(d), policy.tolerance, champion.version
            )
            for d in DIMENSIONS
        ]
        passed_why.append(f"no dimension more than {policy.tolerance:.3f} below champion v{champion.version}")
    failed = [c.why for c in checks if not c.passed]
    if failed:
        return GateResult(passed=False, checks=checks, reasons=failed, **common)
    if policy.baseline_metrics:
        passed_why.insert(0, f"beats both baselines on {', '.join(policy.baseline_metrics)}")
    if policy.floors:
        passed_why.insert(0, f"meets every floor ({', '.join(sorted(policy.floors))})")
    return GateResult(passed=True, checks=checks, reasons=passed_why, **common)
