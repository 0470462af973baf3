"""``worldloop demo``: the local lifecycle end to end — the ``full`` pipeline (SynthWorld, curation, the
VAE and the four training stages, InterBench, the quality ladder, registration), approval and the gated
promotion, then where everything is and how to play the champion."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worldloop.settings import get_settings

if TYPE_CHECKING:
    from worldloop.components.registry import ModelVersionInfo

console = Console()
# Labelled clips. 400 instead of 24 gave stage 1 a lower held-out loss (benchmarks.bench_camera_use),
# but 200 took the demo chain's stage-4 student from 19.33 to 18.66 dB on 8 held-out clips' blocks 1-2
# (18.95 with the I2V warp) and cost the demo ~1.5 minutes: at this training budget, 24.
DEMO_CLIPS = 24

# The quality ladder's headline rows, in the order the demo shows them.
HEADLINE = (
    "vae.psnr",
    "rollout.psnr.blocks_1_2",
    "rollout.ssim.blocks_1_2",
    "camera.rotation_deg",
    "direction.all",
    "interbench.trigger",
)


def _fmt(value: float | None) -> str:
    return "—" if value is None else "inf" if value >= 100.0 else f"{value:.3f}"


def quality_table(info: ModelVersionInfo) -> Table:
    """The version's quality ladder beside its two baselines (what the gate compared) and, where
    measured, its decoded I2V input (what the world model adds over it)."""
    from worldloop.components.registry.evidence import INPUTS

    quality = info.evidence.quality or {}
    notes = {
        "random": "random weights",
        "frozen": "the first frame repeated",
        "plane": "the model's I2V input decoded: the image through its plane, no DiT",
        "still": "the model's I2V input decoded: the image held still, no DiT",
    }
    columns = ["model", "random", "frozen", *(n for n in INPUTS if n in quality)]
    table = Table(
        title=f"Quality ladder of v{info.version} (held-out SynthWorld)",
        caption="; ".join(f"{n}: {notes[n]}" for n in columns if n in notes),
    )
    table.add_column("metric", justify="left", no_wrap=True)
    for name in columns:
        table.add_column(name, justify="right")
    for metric in HEADLINE:
        table.add_row(metric, *(_fmt(quality.get(c, {}).get(metric)) for c in columns))
    return table


def interbench_table(info: ModelVersionInfo) -> Table:
    from worldloop.components.registry.gate import DIMENSIONS

    table = Table(title=f"InterBench of v{info.version}", caption=", ".join(info.aliases))
    table.add_column("dimension")
    table.add_column("score", justify="right")
    for dim in DIMENSIONS:
        table.add_row(dim, _fmt((info.scores or {}).get(dim)))
    return table


def demo(
    clips: int = typer.Option(
        DEMO_CLIPS,
        "--clips",
        min=1,
        help="Labelled SynthWorld clips (and half as many raw pairs, at most 12; a sixth as many long "
        "clips, at most 4).",
    ),
    steps_scale: float = typer.Option(
        0.5, "--steps-scale", min=0.001, help="Scale of every stage's curriculum (1: the tiny presets)."
    ),
    max_steps: int = typer.Option(0, "--max-steps", min=0, help="Cap on each stage's steps (0: none)."),
    eval_cases: int = typer.Option(3, "--eval-cases", min=2, help="InterBench cases (a suite of this size)."),
) -> None:
    """The ``full`` pipeline locally (kfp.local, tiny preset) → register → approve and promote the version
    as the local demo approver through the gate → where everything is and how to play it.

    Re-running skips the steps whose inputs are unchanged (the local pipeline cache) and registers,
    approves and promotes a new version.
    """
    from worldloop.components.registry import Refused, approve, promote, show
    from worldloop.pipelines.local import run_local
    from worldloop.settings import DEMO_APPROVER

    settings = get_settings()
    arguments: dict[str, str | int | float | bool] = {
        "preset": "tiny",
        "clips": clips,
        "raw_clips": max(4, min(12, clips // 2)),
        "long_clips": max(2, min(4, clips // 6)),
        "max_steps": max_steps,
        "steps_scale": steps_scale,
        "eval_cases": eval_cases,
        "suite_cases": eval_cases,
        "curation_executor": "local",
    }
    console.print(
        "[bold]Pipeline full[/bold] (kfp.local): SynthWorld + curation → VAE, stages 1–4 → InterBench + "
        "quality ladder → register"
    )
    started = time.perf_counter()
    run = run_local("full", arguments, settings=settings)
    version = int(str(run.outputs["Output"]))
    cached = f", {run.steps_cached} step(s) skipped (unchanged inputs: outputs from the cache)"
    console.print(
        f"pipeline finished in {time.perf_counter() - started:.0f} s{cached}; registered version {version}"
    )
    approve(version, reason="make demo: tiny local pipeline run", identity=DEMO_APPROVER, settings=settings)
    try:
        decision = promote(version, identity=DEMO_APPROVER, settings=settings)
    except Refused as refused:
        decision = None
        reasons = "\n  ".join(escape(r) for r in refused.reasons)
        console.print(f"[bold red]v{version} was NOT promoted[/bold red]: the gate refused it:\n  {reasons}")
    info = show(version, settings=settings)
    console.print(interbench_table(info))
    console.print(quality_table(info))
    champion = f"models:/{settings.registered_model}@champion"
    if decision is not None:
        before = "none" if decision.champion_before is None else f"v{decision.champion_before}"
        console.print(
            f"{DEMO_APPROVER} approved and promoted v{decision.champion_after} to champion (was {before})"
        )
    else:
        champion = f"models:/{settings.registered_model}/{version}"
        console.print(f"v{version} stays a candidate (worldloop models show {version} lists every check)")
    console.print(
        f"MLflow (pipeline run {run.parent_run_id}, steps as child runs): {settings.resolved_mlflow_uri}"
    )
    console.print(f"  browse it: mlflow ui --backend-store-uri {settings.resolved_mlflow_uri}")
    console.print(f"Pipeline outputs (kfp.local): {(settings.home / 'kfp' / 'outputs').resolve()}")
    console.print(f"Serve and play it: worldloop serve run --model {champion}")
    console.print("  then open http://127.0.0.1:8000/ in a browser (W/A/S/D + mouse, type an instruction)")
