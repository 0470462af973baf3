"""The ``LABEL=URI ...`` argument of the benchmarks that measure existing checkpoints."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from worldloop.platform.stack import ModelStack, load_model_stack


def models_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A parser with ``models`` (``LABEL=URI`` or ``URI``: a checkpoint folder, ``models:/…``,
    ``preset:tiny``), ``--repeats`` and ``--json``; add the benchmark's own options to it."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("models", nargs="+", help="LABEL=URI or URI")
    parser.add_argument("--repeats", type=int, default=2, help="Noise draws per level")
    parser.add_argument("--json", type=Path, help="Write the numbers here")
    return parser


def each_model(items: Sequence[str]) -> Iterator[tuple[str, ModelStack]]:
    """(label, loaded stack) per item; prints how long each took once the caller moves on."""
    for item in items:
        label, _, uri = item.partition("=") if "=" in item else (item, "", item)
        started = time.perf_counter()
        yield label, load_model_stack(uri)
        print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)
