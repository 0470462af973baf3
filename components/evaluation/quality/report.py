"""The ladder's outputs for people: the table (rich), the per-block PSNR plot and side-by-side samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from worldloop.components.evaluation.quality.contestants import INPUTS
from worldloop.components.evaluation.quality.heldout import HeldOutSet
from worldloop.components.evaluation.quality.measures import PSNR_CAP, ContestantScores
from worldloop.video import encode_mp4

PLOTTED = ("model", "random", "frozen", *INPUTS)  # those the report has
SEPARATOR_PX = 2


def fmt(value: float | None, key: str = "") -> str:
    """A table cell: n/a for None, "inf" for a capped PSNR (``key`` names the metric), else the number."""
    if value is None:
        return "n/a"
    if "psnr" in key and value >= PSNR_CAP:
        return "inf"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def ladder_table(title: str, columns: Mapping[str, Mapping[str, float | None]], keys: Sequence[str]) -> Table:
    """One row per metric key, one column per contestant or rung (``columns``: name → metrics)."""
    table = Table(title=title)
    table.add_column("metric", justify="left")
    for name in columns:
        table.add_column(name, justify="right")
    for key in keys:
        table.add_row(key, *(fmt(metrics.get(key), key) for metrics in columns.values()))
    return table


def plot_block_psnr(path: Path, payload: dict[str, Any], *, blocks: int) -> Path:
    """PSNR of block 0 (the reference frame) … block B for model, random, frozen and the decoded I2V
    input (plane/still, where the report has it), as a PNG. A capped (identical, +inf) value is drawn
    at the top edge and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        name: [payload["contestants"][name]["metrics"][f"rollout.psnr.block{b}"] for b in range(blocks + 1)]
        for name in PLOTTED
        if name in payload["contestants"]
    }
    finite = [v for values in series.values() for v in values if v is not None and v < PSNR_CAP]
    top = (max(finite) if finite else 30.0) + 5.0
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in series.items():
        ys = [min(v, top) if v is not None else np.nan for v in values]
        ax.plot(range(blocks + 1), ys, marker="o", label=name)
        for b, v in enumerate(values):
            if v is not None and v >= PSNR_CAP:
                ax.annotate("inf", (b, top), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_ylim(0, top + 1)
    ax.set_xticks(range(blocks + 1))
    ax.set_xlabel("block (0 = reference frame)")
    ax.set_ylabel("PSNR vs truth (dB)")
    ax.set_title(f"{payload['model']} ({payload['sampler']['kind']}) on held-out SynthWorld")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def side_by_side(videos: Sequence[np.ndarray]) -> np.ndarray:
    """(F, H, W, 3) videos → (F, H, n·W + gaps, 3), separated by white columns."""
    f, h = videos[0].shape[:2]
    gap = np.full((f, h, SEPARATOR_PX, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for i, video in enumerate(videos):
        parts += [gap, video] if i else [video]
    return np.concatenate(parts, axis=2)


def write_samples(
    folder: Path, held: HeldOutSet, scores: Sequence[ContestantScores], *, fps: float
) -> list[Path]:
    """``clip_NN.mp4``: truth | each of ``scores``' sample videos, for the clips they kept."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(len(s.samples) for s in scores)):
        path = folder / f"clip_{i:02d}.mp4"
        frames = side_by_side([held.clips[i].frames, *(s.samples[i] for s in scores)])
        if frames.shape[2] % 2:  # H.264 yuv420p needs even sides
            frames = np.pad(frames, ((0, 0), (0, 0), (0, 1), (0, 0)), constant_values=255)
        encode_mp4(frames, path, fps=max(1, round(fps)))
        paths.append(path)
    return paths
