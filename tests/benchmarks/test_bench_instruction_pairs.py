"""``bench_instruction_pairs``: every SynthWorld event is recognised from both forms of its
instruction, and a short run on random weights measures every held-out number where it is defined."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.bench_instruction_pairs import event_kind, main
from worldloop.components.synthworld.events import SPECS


def test_every_event_is_recognised_from_its_imperative_and_its_description() -> None:
    for kind, spec in SPECS.items():
        described = f"{spec.agent[0].upper()}{spec.agent[1:]} {spec.action}; {spec.state_change}."
        assert event_kind(spec.instruction) == kind.value
        assert event_kind(spec.instruction.upper()) == kind.value
        assert event_kind(described) == kind.value
    assert event_kind("walk forward") == "other"


def test_a_short_run_measures_the_held_out_pairs_along_the_way(tmp_path: Path) -> None:
    out = tmp_path / "pairs.json"
    main(
        ["--init", "preset:tiny", "--pairs", "8", "--clips", "8", "--held-out-pairs", "8", "--steps", "2"]
        + ["--frames", "9", "--threads", "1", "--json", str(out)]
    )
    result = json.loads(out.read_text())
    curve = result["curve"]
    assert [row["step"] for row in curve] == [0, 1, 2]
    kinds = {kind.value for kind in SPECS} | {"other"}
    for row in curve:
        assert row["fm"] > 0 and row["pair"] > 0 and row["coarse"] > 0
        assert -1.0 <= row["cosine"] <= 1.0
        per_kind = {k.removeprefix("cosine."): v for k, v in row.items() if k.startswith("cosine.")}
        assert set(per_kind) <= kinds and all(-1.0 <= v <= 1.0 for v in per_kind.values())
        assert all(math.isfinite(v) for v in row.values())
    assert curve[0] != curve[-1]  # the two steps trained the copy
