"""InterBench report files: ``radar.png`` (the six dimensions) and ``report.html`` (chart, tables, videos;
with multi-turn cases, a table of each turn's six dimensions and of persistence)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from worldloop.components.evaluation.judges.base import DIMENSIONS

LABELS = {
    "trigger": "Trigger rate",
    "alignment": "Prompt–video alignment",
    "fluency": "Interaction fluency",
    "scope": "Scope accuracy",
    "end_state": "End-state consistency",
    "physics": "Physical correctness",
}


def radar_chart(series: dict[str, dict[str, float | None]], path: Path, *, title: str) -> Path:
    """One polygon per entry of ``series`` (name → dimension → score in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [d.value for d in DIMENSIONS]
    angles = [2 * math.pi * i / len(dims) for i in range(len(dims))]
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(polar=True)
    for name, scores in series.items():
        values = [scores.get(d) or 0.0 for d in dims]
        ax.plot(angles + angles[:1], values + values[:1], linewidth=2, label=name)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.15)
    ax.set_xticks(angles)
    ax.set_xticklabels([LABELS[d] for d in dims], fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_title(title, pad=24)
    if len(series) > 1:
        ax.legend(loc="lower right", bbox_to_anchor=(1.25, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _multi_turn_section(summary: dict[str, Any] | None, head: str) -> str:
    """Per turn number, the six dimensions over the multi-turn cases and the persistence of that turn's
    state through the later turns (— for the last turn, which none follows)."""
    if not summary:
        return ""
    dims = [d.value for d in DIMENSIONS]
    kept = summary["persistence_by_turn"]
    rows = "".join(
        f"<tr><td>turn {n}</td>"
        + "".join(f"<td>{_fmt(scores.get(d))}</td>" for d in dims)
        + f"<td>{_fmt(kept.get(n))}</td></tr>"
        for n, scores in summary["turns"].items()
    )
    return f"""<h2>Multi-turn</h2>
<p>{summary["cases"]} multi-turn case(s): each turn judged over its own frames; persistence — the state a
turn produced is still there after the later instructions — {_fmt(summary["persistence"])}.</p>
<table id="multi_turn"><tr><th></th>{head}<th>Persistence</th></tr>{rows}</table>
"""


def write_report(out: Path, payload: dict[str, Any]) -> Path:
    """``out/radar.png`` and ``out/report.html`` from the ``scores.json`` payload."""
    radar = radar_chart({"InterBench": payload["interbench"]}, out / "radar.png", title=payload["model"])
    image = base64.b64encode(radar.read_bytes()).decode()
    dims = [d.value for d in DIMENSIONS]
    judge = payload["judge"]
    accuracy = judge.get("held_out_accuracy")
    trust = (
        ""
        if accuracy is None
        else f" — held-out accuracy {accuracy:.3f} ({'trusted' if accuracy >= 0.95 else 'NOT trusted'})"
    )
    head = "".join(f"<th>{LABELS[d]}</th>" for d in dims)
    overall = "".join(f"<td>{_fmt(payload['interbench'].get(d))}</td>" for d in dims)
    categories = "".join(
        f"<tr><td>{_fmt(cat)}</td>" + "".join(f"<td>{_fmt(s.get(d))}</td>" for d in dims) + "</tr>"
        for cat, s in payload["per_category"].items()
    )
    general = "".join(f"<tr><td>{_fmt(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in payload["general"].items())
    multi = _multi_turn_section(payload.get("multi_turn"), head)
    cases = "".join(
        f"<tr><td><a href='{html.escape(r['video'])}'>{_fmt(r['case'])}</a></td>"
        f"<td>{_fmt(r['instruction'])}</td>"
        + "".join(f"<td>{_fmt(r['scores'].get(d))}</td>" for d in dims)
        + f"<td>{_fmt('; '.join(r['notes']))}</td></tr>"
        for r in payload["cases"]
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>InterBench — {_fmt(payload["model"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
</style></head><body>
<h1>InterBench</h1>
<p>Model <code>{_fmt(payload["model"])}</code> (preset {_fmt(payload["preset"])}) on suite
<code>{_fmt(payload["suite"]["name"])}</code>, {payload["suite"]["cases"]} cases; judge
<b>{_fmt(judge["name"])}</b>{trust}.</p>
<img id="radar" alt="InterBench radar chart" src="data:image/png;base64,{image}">
<h2>Dimensions</h2>
<table id="dimensions"><tr><th></th>{head}</tr><tr><td>all cases</td>{overall}</tr>{categories}</table>
{multi}<h2>General metrics</h2>
<table id="general"><tr><th>metric</th><th>mean</th></tr>{general}</table>
<h2>Cases</h2>
<table id="cases"><tr><th>case</th><th>instruction</th>{head}<th>notes</th></tr>{cases}</table>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
