"""InterBench's multi-turn category (issue 17): cases with several instructions round-trip through
suite.json, the shipped suite holds its share of them, the model gets each turn at its block with one
recache, and both judges judge every turn and whether earlier state persists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pytest
from chat_endpoint import Reply, Sent, chat_server, endpoint_fields
from PIL import Image
from pydantic import ValidationError

from worldloop.components.evaluation import multi_turn
from worldloop.components.evaluation.interbench import generate_case, instruction_blocks, run_interbench
from worldloop.components.evaluation.judges import Dimension, SynthWorldJudge, VLMJudge, VLMJudgeConfig
from worldloop.components.evaluation.judges.base import CaseScores
from worldloop.components.evaluation.suite import (
    SUITE_FILE,
    InterBenchCase,
    LoadedSuite,
    Suite,
    build_synthworld_suite,
)
from worldloop.components.synthworld import Clip, EventKind, SynthConfig, generate_clip
from worldloop.components.synthworld.clip import render_turns, render_without_turn
from worldloop.model.rollout import StreamState
from worldloop.platform.stack import load_model_stack
from worldloop.settings import Settings

SIZE, FRAMES = 64, 33
HIGH = (Dimension.trigger, Dimension.alignment, Dimension.end_state)
ACTIONS = [{"keys": "w"}] * 9
TWO_TURNS = {
    "id": "door-night",
    "category": "multi_turn",
    "prompt": "a stone hall with a wooden door",
    "turns": [
        {"instruction": "open the door", "instruction_frame": 2, "category": "character_action",
         "kind": "open_door"},
        {"instruction": "make it night", "instruction_frame": 6, "category": "environment", "kind": "night"},
    ],
    "frames": 9,
    "actions": ACTIONS,
}  # fmt: skip


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> LoadedSuite:
    return build_synthworld_suite(
        tmp_path_factory.mktemp("suite"), cases=10, size=SIZE, frames=FRAMES, seed=0
    )


def _multi(suite: LoadedSuite) -> list[InterBenchCase]:
    return [c for c in suite.cases if c.multi_turn]


def _clip(case: InterBenchCase, cfg: SynthConfig) -> Clip:
    """The case's clip again, from its seed and kinds (SynthWorld is deterministic)."""
    kinds = [EventKind(t.kind) for t in case.turns if t.kind]
    assert case.seed is not None
    return generate_clip(cfg, case.seed, kind=kinds[0], followups=tuple(kinds[1:]))


# -- the case format -------------------------------------------------------------------------------------
def test_multi_turn_case_round_trips_through_suite_json(tmp_path: Path) -> None:
    single = dict(
        TWO_TURNS, id="snow", category="environment", instruction="make it snow", instruction_frame=3
    )
    del single["turns"]
    suite = Suite(name="mine", size=8, frames=9, cases=(InterBenchCase.model_validate(TWO_TURNS),
                                                        InterBenchCase.model_validate(single)))  # fmt: skip
    (tmp_path / "images").mkdir()
    for case in suite.cases:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{case.id}.png")
    (tmp_path / SUITE_FILE).write_text(suite.model_dump_json(indent=1))
    loaded = LoadedSuite(tmp_path)
    assert loaded.suite == suite and loaded.suite.version == 2
    door = loaded.cases[0]
    assert door.multi_turn and door.category.value == "multi_turn" and door.instruction is None
    assert [(t.instruction, t.instruction_frame, t.kind) for t in door.instructions()] == [
        ("open the door", 2, "open_door"),
        ("make it night", 6, "night"),
    ]
    assert door.windows() == [(2, 6), (6, 9)] and door.label() == "open_door→night"
    snow = loaded.cases[1]
    assert not snow.multi_turn and snow.windows() == [(3, 9)]
    assert [t.instruction for t in snow.instructions()] == ["make it snow"]

    # A suite written before multi-turn cases (version 1, no "turns") still loads.
    old = json.loads((tmp_path / SUITE_FILE).read_text())
    old["version"], old["cases"] = 1, [{k: v for k, v in old["cases"][1].items() if k != "turns"}]
    (tmp_path / SUITE_FILE).write_text(json.dumps(old))
    assert LoadedSuite(tmp_path).cases[0].instruction == "make it snow"
    old["version"] = 3
    (tmp_path / SUITE_FILE).write_text(json.dumps(old))
    with pytest.raises(ValidationError, match="version 3"):
        LoadedSuite(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"turns": TWO_TURNS["turns"][:1]}, "two or more"),
        ({"turns": TWO_TURNS["turns"][::-1]}, "turn 2 is issued at frame 2, not after turn 1"),
        ({"turns": [TWO_TURNS["turns"][0], dict(TWO_TURNS["turns"][0], instruction_frame=5)]}, "repeats"),
        ({"category": "environment"}, "category multi_turn"),
        ({"instruction": "open the door"}, "in each turn"),
        ({"turns": [TWO_TURNS["turns"][0], dict(TWO_TURNS["turns"][1], instruction_frame=9)]}, "≥ frames 9"),
        ({"turns": [], "category": "multi_turn", "instruction": "x", "instruction_frame": 2}, "in turns"),
        ({"turns": []}, "give instruction and instruction_frame"),
    ],
)
def test_invalid_multi_turn_cases_say_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        InterBenchCase.model_validate(TWO_TURNS | change)


# -- the shipped suite -----------------------------------------------------------------------------------
def test_shipped_suite_has_its_share_of_multi_turn_cases(suite: LoadedSuite) -> None:
    cases = _multi(suite)
    assert len(cases) >= 0.1 * len(suite.cases) and [c.id for c in cases] == [
        "0004-open_door.night",
        "0009-explosion.draw_torch",
    ]
    gap = multi_turn.min_turn_gap()
    assert gap == 12  # the largest block of the presets (small, a14b: 3 latent frames × 4)
    for case in cases:
        frames = [t.instruction_frame for t in case.turns]
        assert len(frames) >= 2 and all(b - a >= gap for a, b in zip(frames, frames[1:], strict=False))
        assert frames[0] >= 1 and frames[-1] < case.frames == FRAMES
        truth = suite.truth(case.id)
        assert len(truth.turns) == len(case.turns)
        for turn, spec in zip(truth.turns, case.turns, strict=True):
            f = spec.instruction_frame
            assert turn.progress[f - 1] == 0 and turn.progress[f] > 0  # issued as the event starts
            assert turn.masks.shape == (FRAMES, SIZE, SIZE) and turn.masks[f:].any(axis=(1, 2)).all()
            assert f <= turn.full < FRAMES
        assert truth.turns[-1].without is None and truth.turns[-1].event is truth.event
        # The stored per-turn counterfactuals are the renders of the clip with the first k turns.
        cfg = SynthConfig(size=SIZE, frames=FRAMES)
        clip = _clip(case, cfg)
        assert np.array_equal(clip.frames, truth.event)
        assert np.array_equal(render_turns(clip, cfg, 1), truth.turns[0].event)
        assert np.array_equal(render_turns(clip, cfg, 1), truth.turns[1].counterfactual)
        assert np.array_equal(render_turns(clip, cfg, 0), truth.turns[0].counterfactual)
    # Deterministic: the same arguments give the same cases.
    again = build_synthworld_suite(suite.root.parent / "again", cases=5, size=SIZE, frames=FRAMES, seed=0)
    assert again.cases == suite.cases[:5]


# -- the SynthWorld judge --------------------------------------------------------------------------------
def _turns(scored: CaseScores) -> list[dict[Dimension, float | None]]:
    return [t.scores for t in scored.turns]


def test_synthworld_judge_scores_each_turn_and_persistence(suite: LoadedSuite) -> None:
    judge = SynthWorldJudge(suite)
    cfg = SynthConfig(size=SIZE, frames=FRAMES)
    for case in _multi(suite):
        truth = suite.truth(case.id)
        clip = _clip(case, cfg)
        on2 = case.turns[1].instruction_frame

        exact = judge.score(case, truth.event)
        for scores in _turns(exact):
            assert all(scores[d] == 1.0 for d in HIGH), (case.id, scores)
            # Not scope: a drawn torch lights the room beyond its mask (single-turn truth scores ~0.5 too).
            assert all((scores[d] or 0.0) >= 0.9 for d in (Dimension.fluency, Dimension.physics)), scores
        assert exact.turns[0].persistence == 1.0 and exact.turns[-1].persistence is None
        assert exact.persistence == 1.0

        # Turn 2 never asked: turn 1 is still right and kept, turn 2 fails.
        never = judge.score(case, render_turns(clip, cfg, 1))
        assert all(_turns(never)[0][d] == 1.0 for d in HIGH) and never.turns[0].persistence == 1.0
        assert all(_turns(never)[1][d] == 0.0 for d in HIGH), (case.id, _turns(never)[1])

        # Turn 1's state vanishes once turn 2 is issued: its region shows the no-event render again.
        vanish = truth.event.copy()
        region = np.stack(
            [cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0 for m in truth.turns[0].masks]
        )
        nothing = render_turns(clip, cfg, 0)
        vanish[on2:][region[on2:]] = nothing[on2:][region[on2:]]
        gone = judge.score(case, vanish)
        assert all(_turns(gone)[0][d] == 1.0 for d in HIGH)  # it was right until turn 2
        assert gone.turns[0].persistence is not None and gone.turns[0].persistence <= 0.2, (case.id, gone)

        # Turn 1's state gone while turn 2 happens (the render without turn 1 from turn 2 on).
        without = truth.event.copy()
        alone = render_without_turn(clip, cfg, 0)
        without[on2:] = alone[on2:]
        assert judge.score(case, without).turns[0].persistence == 0.0


def test_three_turns_get_a_longer_clip_where_the_suite_length_has_no_room(tmp_path: Path) -> None:
    """At 33 frames two turns a block apart leave no room for a third: the case is staged in the shortest
    longer clip that holds all three (its own ``frames``), judged like any other; at 57 frames it fits."""
    assert multi_turn.stagings(33, 3, 12) == [(37, 3), (49, 3), (33, 2)]
    assert multi_turn.stagings(57, 3, 12) == [(57, 3), (57, 2)]
    kinds = [EventKind.open_door, EventKind.draw_torch, EventKind.rain]
    for frames in (33, 57):
        three = build_synthworld_suite(
            tmp_path / str(frames), cases=1, size=32, frames=frames, seed=0, kinds=kinds, multi_turn_every=1
        )
        (case,) = three.cases
        assert case.id == "0000-open_door.draw_torch.rain" and len(case.turns) == 3
        assert case.frames == frames if frames == 57 else case.frames in (37, 49)
        truth = three.truth(case.id)
        assert truth.event.shape[0] == case.frames
        scored = SynthWorldJudge(three).score(case, truth.event)
        assert [t.scores[Dimension.trigger] for t in scored.turns] == [1.0, 1.0, 1.0]
        assert [t.persistence for t in scored.turns] == [1.0, 1.0, None]


# -- generation ------------------------------------------------------------------------------------------
def test_generate_case_issues_each_turn_at_its_block_with_one_recache(suite: LoadedSuite) -> None:
    stack = load_model_stack("preset:tiny")
    case = _multi(suite)[0]
    seen: list[tuple[int, int, str | None]] = []

    def on_block(block: int, state: StreamState) -> None:
        seen.append((block, state.recaches, state.instruction))

    video = generate_case(stack, suite, case, seed=0, on_block=on_block)
    assert video.shape == (FRAMES, SIZE, SIZE, 3) and video.dtype == np.uint8
    per_block = stack.spec.model.causal.block_frames * stack.spec.model.vae.temporal_stride
    blocks = {(t.instruction_frame - 1) // per_block + 1: t.instruction for t in case.turns}
    assert instruction_blocks(case, per_block) == blocks and len(blocks) == len(case.turns)
    recaches, instruction = 0, None
    for block, count, current in seen:
        if block in blocks:  # exactly one recache, with this turn's instruction
            recaches, instruction = recaches + 1, blocks[block]
        assert (count, current) == (recaches, instruction), (block, seen)
    assert recaches == len(case.turns) and len(seen) == (FRAMES - 1) // per_block
    # A model whose block would hold both turns cannot issue them apart: refused, not merged.
    with pytest.raises(ValueError, match="falls in the block of the turn before it"):
        instruction_blocks(case, FRAMES)


def test_run_reports_turns_and_persistence(suite: LoadedSuite, tmp_path: Path) -> None:
    """A multi-turn case through run_interbench: scores.json, MLflow, report."""
    chosen = [_multi(suite)[0]]
    small = Suite(name="two", size=SIZE, frames=FRAMES, cases=tuple(chosen))
    (tmp_path / "suite").mkdir()
    for sub in ("images", "truth"):
        (tmp_path / "suite" / sub).symlink_to(suite.root / sub)
    (tmp_path / "suite" / SUITE_FILE).write_text(small.model_dump_json())
    loaded = LoadedSuite(tmp_path / "suite")
    settings = Settings(home=tmp_path / "home")
    judge = SynthWorldJudge(loaded)
    result = run_interbench(
        "preset:tiny", out=tmp_path / "out", suite=loaded.root, judge=judge, settings=settings
    )
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    summary = scores["multi_turn"]
    assert summary == result.multi_turn and summary["cases"] == 1
    assert set(summary["turns"]) == {"1", "2"} and set(summary["turns"]["1"]) == {d.value for d in Dimension}
    assert set(summary["persistence_by_turn"]) == {"1"}
    row = next(r for r in scores["cases"] if r["category"] == "multi_turn")
    assert [t["instruction"] for t in row["turns"]] == [t.instruction for t in chosen[0].turns]
    assert row["instruction"] == " → ".join(t.instruction for t in chosen[0].turns)
    assert row["persistence"] == summary["persistence"] and len(row["turns"][0]["scores"]) == 6
    assert set(scores["interbench"]) == {d.value for d in Dimension}  # the radar's six stay as they were
    assert "multi_turn" in scores["per_category"]

    mlflow.set_tracking_uri(settings.resolved_mlflow_uri)
    (run,) = mlflow.search_runs(experiment_names=["worldloop-evaluation"], output_format="list")
    logged = run.data.metrics
    assert logged["interbench.multi_turn.turn_2.trigger"] == summary["turns"]["2"]["trigger"]
    if summary["persistence"] is not None:
        assert logged["interbench.multi_turn.persistence"] == summary["persistence"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert '<table id="multi_turn">' in page and "<td>turn 2</td>" in page


# -- the VLM judge ---------------------------------------------------------------------------------------
def test_vlm_judge_asks_per_turn_and_about_persistence() -> None:
    case = InterBenchCase.model_validate(TWO_TURNS)
    video = np.stack([np.full((16, 16, 3), 10 + 25 * i, np.uint8) for i in range(9)])
    ratings = {1: 8, 2: 4}  # every rating question of turn n answers ratings[n]

    def script(n: int, sent: Sent) -> Reply:
        text = sent.body["messages"][1]["content"][0]["text"]
        asked = re.search(r"^Question \((\w+)\):", text, re.MULTILINE)
        assert asked, text
        if asked.group(1) == "persistence":
            return Reply(content=json.dumps({"answer": "partly", "reason": "the door half closes"}))
        judged = re.search(r"^Judge instruction (\d) ", text, re.MULTILINE)
        assert judged, text
        turn = int(judged.group(1))
        dim = Dimension(asked.group(1))
        if dim is Dimension.trigger:
            return Reply(content=json.dumps({"answer": "yes" if turn == 1 else "no"}))
        if dim is Dimension.end_state:
            return Reply(content=json.dumps({"answer": "yes"}))
        return Reply(content=json.dumps({"rating": ratings[turn]}))

    with chat_server(script) as (url, received):
        config = VLMJudgeConfig.model_validate(endpoint_fields(url, frames_per_question=5, max_retries=0))
        with VLMJudge(config) as vlm:
            scored = vlm.score(case, video)
    assert len(received) == 6 * 2 + 1
    first, second = scored.turns
    assert first.scores[Dimension.trigger] == 1.0 and first.scores[Dimension.fluency] == pytest.approx(0.8)
    assert second.scores[Dimension.trigger] == 0.0 and second.scores[Dimension.fluency] == pytest.approx(0.4)
    assert first.persistence == 0.5 and second.persistence is None and scored.persistence == 0.5
    assert scored.scores[Dimension.trigger] == 0.5 and scored.scores[Dimension.scope] == pytest.approx(0.6)
    assert "turn 1: persistence: partly: the door half closes" in scored.notes

    texts = [s.body["messages"][1]["content"][0]["text"] for s in received]
    for text in texts:
        assert '1. at frame 2: "open the door"' in text and '2. at frame 6: "make it night"' in text
    assert sum('Judge instruction 1 ("open the door") over frames 2-5' in t for t in texts) == 6
    assert sum('Judge instruction 2 ("make it night") over frames 6-8' in t for t in texts) == 6
    (persist,) = [t for t in texts if "Question (persistence)" in t]
    assert "Once instruction 2 is issued at frame 6" in persist
    labels = [p["text"] for p in received[0].body["messages"][1]["content"][1::2]]
    assert labels == [
        "Frame 0 (the reference image, before the first instruction):",
        "Frame 2 (instruction 1 is issued here):",
        "Frame 4 (after instruction 1):",
        "Frame 6 (instruction 2 is issued here):",
        "Frame 8 (after instruction 2, the last frame):",
    ]
