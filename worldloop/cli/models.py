"""``worldloop models``: the registry — list and show versions, approve, promote, roll back (DESIGN.md §8).

Exit codes: 0 done; 1 the rules refused the decision (one line ``worldloop: error: ... refused: <every
reason>`` on stderr, after the gate table for a promotion); 2 bad input (no such version, blank reason,
``--as`` on the cluster profile) or no identity (the Kubernetes API could not authenticate the caller).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from worldloop.components.registry import GateResult, ModelVersionInfo

console = Console()
models = typer.Typer(help="MLflow registry: list, show, approve, promote, rollback.", no_args_is_help=True)
_AS = typer.Option(
    None,
    "--as",
    help=(
        "Local profile: the acting identity (default: WORLDLOOP_IDENTITY, else USER@HOST). Refused on the "
        "cluster profile, where you act as your Kubernetes user."
    ),
)
_T = TypeVar("_T")


_SHORT = {"alignment": "align", "end_state": "end", "fluency": "fluent", "trigger": "trig", "physics": "phys"}


def _fmt(value: float | None, *, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _decide(action: Callable[[], _T]) -> _T:
    """Run a decision; a refusal is one line on stderr and exit status 1."""
    from worldloop.components.registry import Refused

    try:
        return action()
    except Refused as refused:
        print(f"worldloop: error: {refused}", file=sys.stderr)
        raise typer.Exit(1) from refused


def _gate_table(result: GateResult) -> Table:
    champion = "—" if result.champion_version is None else f"v{result.champion_version}"
    table = Table(title=f"Promotion gate: v{result.candidate_version} vs champion {champion}")
    for i, name in enumerate(("check", "candidate", "against", "result")):
        table.add_column(name, justify="left" if i in (0, 3) else "right")
    for check in result.checks:  # against: the champion's score, a baseline's value or a floor
        verdict = "ok" if check.passed else "[red]FAIL[/red]"
        table.add_row(check.dimension, _fmt(check.candidate), _fmt(check.champion), verdict)
    table.caption = ("passed: " if result.passed else "FAILED: ") + escape("; ".join(result.reasons))
    return table


@models.command("list", help="Registered versions with aliases and InterBench scores.")
def models_list() -> None:
    from worldloop.components.registry import list_versions
    from worldloop.components.registry.gate import DIMENSIONS
    from worldloop.settings import get_settings

    settings = get_settings()
    infos = list_versions(settings=settings)
    if not infos:
        console.print(f"no versions of {settings.registered_model!r} in {settings.resolved_mlflow_uri}")
        return
    # Narrow enough for 80 columns; the lineage and the full scores are in 'worldloop models show'.
    table = Table(title=f"{settings.registered_model} ({settings.resolved_mlflow_uri})")
    table.add_column("version")
    table.add_column("aliases", overflow="fold")
    for dim in DIMENSIONS:
        table.add_column(_SHORT.get(dim, dim), justify="right")
    table.add_column("approved by", overflow="fold")
    for info in infos:
        scores = [_fmt((info.scores or {}).get(d), digits=2) for d in DIMENSIONS]
        approver = info.approval.identity if info.approval else "—"
        table.add_row(str(info.version), ", ".join(info.aliases), *scores, escape(approver))
    console.print(table)


def _show_version(info: ModelVersionInfo) -> None:
    table = Table(title=f"{info.name} v{info.version}", show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    rows = [("uri", info.uri), ("aliases", ", ".join(info.aliases) or "—"), ("created", info.created)]
    rows += [("run", info.run_id or "—"), ("source", info.source)]
    if info.approval:
        rows.append(("approval", f"{info.approval.identity} at {info.approval.time}: {info.approval.reason}"))
    else:
        rows.append(("approval", "—"))
    rows += [(f"lineage.{k}", v) for k, v in info.lineage.items()]
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)


@models.command(
    "show", help="One version (a number or an alias): lineage, scores, approval, gate, audit trail."
)
def models_show(
    version: str = typer.Argument(..., help="Version number or alias (candidate, champion)."),
) -> None:
    from worldloop.components.registry import check_gate, show
    from worldloop.settings import get_settings

    settings = get_settings()
    info = show(version, settings=settings)
    _show_version(info)
    console.print(_gate_table(check_gate(info, settings=settings)))
    audit = Table(title="audit trail")
    for name in ("time", "action", "version", "identity", "result", "reasons"):
        audit.add_column(name, overflow="fold")
    for r in info.audit:
        version_text = "—" if r.version is None else f"v{r.version}"
        audit.add_row(
            r.time, r.action, version_text, escape(r.identity), r.result, escape("; ".join(r.reasons))
        )
    console.print(audit)


@models.command("approve", help="Record an approval (identity, reason, time) for a version.")
def models_approve(
    version: str = typer.Argument(..., help="Version number or alias."),
    reason: str = typer.Option(..., "--reason", help="Why it may be promoted (recorded)."),
    as_: str = _AS,
) -> None:
    from worldloop.components.registry import approve

    info = _decide(lambda: approve(version, reason=reason, identity=as_))
    assert info.approval is not None
    console.print(f"{info.name} v{info.version} approved by {info.approval.identity} at {info.approval.time}")


@models.command("promote", help="Move 'champion' to a version that passed the gate and was approved.")
def models_promote(
    version: str = typer.Argument(..., help="Version number or alias."), as_: str = _AS
) -> None:
    from worldloop.components.registry import check_gate, promote, show
    from worldloop.settings import get_settings

    settings = get_settings()
    console.print(_gate_table(check_gate(show(version, settings=settings), settings=settings)))
    decision = _decide(lambda: promote(version, identity=as_, settings=settings))
    before = "none" if decision.champion_before is None else f"v{decision.champion_before}"
    console.print(f"{decision.version.name} champion: {before} → v{decision.champion_after}")


@models.command("rollback", help="Restore the previous champion.")
def models_rollback(as_: str = _AS) -> None:
    from worldloop.components.registry import rollback

    decision = _decide(lambda: rollback(identity=as_))
    console.print(
        f"{decision.version.name} champion: v{decision.champion_before} → v{decision.champion_after}"
    )
