"""What a version was measured with, as the registry stores it (DESIGN.md §8): the InterBench payload's
setup and the quality ladder's numbers, turned into version tags and read back as the gate's
:class:`~worldloop.components.registry.gate.Evidence`.

The quality ladder (``worldloop eval quality``) writes ``quality.json`` with a ``contestants`` map
(``model``, ``random``, ``frozen``, ``truth``) of flat metric dicts and a ``held_out`` block; the
version keeps the model's and the two baselines' metrics (per-block detail dropped if the tag would
grow past MLflow's limit) and the held-out set they were measured on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worldloop.components.registry.gate import BASELINES, DIMENSIONS, Evidence
from worldloop.components.registry.tags import (
    CASES,
    JUDGE,
    MAX_TAG_CHARS,
    QUALITY,
    QUALITY_SETUP,
    SCORES,
    SUITE,
)

CONTESTANTS = ("model", *BASELINES)
# The decoded I2V input (components/evaluation/quality), kept beside them where the report has it.
INPUTS = ("plane", "still")
SETUP_KEYS = ("seed", "clips", "blocks", "height", "width")


def read_payload(
    given: Mapping[str, Any] | Path | None, folder: Path | None, name: str, *, required: bool
) -> dict[str, Any] | None:
    """A JSON report: ``given`` as a payload or a path, else ``folder/name`` (an error when ``required``
    and the folder lacks it), else None."""
    if given is None and folder is not None:
        if (folder / name).is_file():
            given = folder / name
        elif required:
            raise FileNotFoundError(f"{folder}: no {name}")
    if given is None:
        return None
    if isinstance(given, Path):
        if not given.is_file():
            raise FileNotFoundError(f"{given}: no such {name}")
        payload: dict[str, Any] = json.loads(given.read_text(encoding="utf-8"))
        return payload
    return dict(given)


def read_quality(quality: Mapping[str, Any] | Path | None, quality_dir: Path | None) -> dict[str, Any] | None:
    """The ``quality.json`` payload (``worldloop eval quality --out DIR``): given, read from a path, or
    from ``quality_dir``; checked."""
    payload = read_payload(quality, quality_dir, "quality.json", required=True)
    if payload is None:
        return None
    contestants = payload.get("contestants")
    if not isinstance(contestants, Mapping) or not set(CONTESTANTS) <= set(contestants):
        raise ValueError(f"not a quality.json: 'contestants' must hold {', '.join(CONTESTANTS)}")
    for name in CONTESTANTS:
        metrics = contestants[name].get("metrics") if isinstance(contestants[name], Mapping) else None
        if not isinstance(metrics, Mapping) or any(
            v is not None and not isinstance(v, int | float) for v in metrics.values()
        ):
            raise ValueError(f"quality.json: contestants.{name}.metrics must map metric names to numbers")
    return payload


def quality_tags(payload: Mapping[str, Any]) -> dict[str, str]:
    """The version tags of a quality payload: headline metrics per contestant (the model, the gate's
    baselines and the decoded I2V input where measured), and the held-out setup."""
    names = [*CONTESTANTS, *(n for n in INPUTS if n in payload["contestants"])]
    metrics = {name: dict(payload["contestants"][name]["metrics"]) for name in names}
    text = json.dumps(metrics, sort_keys=True)
    if len(text) > MAX_TAG_CHARS:  # keep the summaries, drop the per-block detail
        metrics = {n: {k: v for k, v in m.items() if ".block" not in k} for n, m in metrics.items()}
        text = json.dumps(metrics, sort_keys=True)
    held = payload.get("held_out", {})
    return {QUALITY: text, QUALITY_SETUP: json.dumps({k: held.get(k) for k in SETUP_KEYS}, sort_keys=True)}


def interbench_tags(payload: Mapping[str, Any]) -> dict[str, str]:
    """The version tags of an InterBench ``scores.json``: scores, suite, judge, case count."""
    return {
        SCORES: json.dumps({d: payload["interbench"][d] for d in DIMENSIONS}),
        SUITE: str(payload.get("suite", {}).get("name", "")),
        JUDGE: str(payload.get("judge", {}).get("name", "")),
        CASES: str(payload.get("suite", {}).get("cases", "")),
    }


def evidence(version: int, tags: Mapping[str, str]) -> Evidence:
    """The gate's view of a version, from its tags."""
    scores = json.loads(tags[SCORES]) if SCORES in tags else None
    setup = {
        key: tags[tag] for key, tag in (("suite", SUITE), ("judge", JUDGE), ("cases", CASES)) if tag in tags
    }
    quality = json.loads(tags[QUALITY]) if QUALITY in tags else None
    return Evidence(version=version, scores=scores, setup=setup, quality=quality)
