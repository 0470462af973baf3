"""Caption dropout in the flow-matching stages: a seeded share of samples trains the unconditional
branch — exactly the conditioning the stage-3/4 real score's guidance subtracts (empty text, no
instruction)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from multi_turn_clips import FRAMES, SIZE, instruction_objective, two_turn_dataset, two_turn_window

from worldloop.data import Mixture
from worldloop.model.train.config import stage_preset
from worldloop.model.train.objectives.base import RankBatch
from worldloop.model.train.objectives.flow_matching import FlowMatchingObjective


@pytest.fixture(scope="module")
def two_turn_clip(tmp_path_factory: pytest.TempPathFactory) -> Mixture:
    return two_turn_dataset(tmp_path_factory)


def _objective(dropout: float, *, seed: int = 0) -> FlowMatchingObjective:
    return instruction_objective(size=SIZE, frames=FRAMES, caption_dropout=dropout, seed=seed)


def _batch(window: Any, indices: list[int]) -> RankBatch:
    return RankBatch(
        [window] * len(indices), indices, first=indices[0], global_batch=len(indices), first_row=0,
        device=torch.device("cpu"),
    )  # fmt: skip


def test_presets_drop_captions_in_the_flow_matching_stages() -> None:
    for scale in ("tiny", "a14b"):
        assert stage_preset("action", scale=scale).caption_dropout == 0.1
        assert stage_preset("instruction", scale=scale).caption_dropout == 0.1


def test_dropped_samples_are_seeded_per_sample_and_near_the_rate(two_turn_clip: Mixture) -> None:
    window = two_turn_window(two_turn_clip)
    objective = _objective(0.3)
    indices = list(range(400))
    dropped = [w.caption == "" for w in objective.drop_captions(_batch(window, indices))]
    assert 0.22 < sum(dropped) / len(dropped) < 0.38
    # the same sample drops the same way in any batch layout (data-parallel ranks agree)
    again = objective.drop_captions(_batch(window, indices[100:110]))
    assert [w.caption == "" for w in again] == dropped[100:110]
    kept = [
        w for w, d in zip(objective.drop_captions(_batch(window, indices)), dropped, strict=True) if not d
    ]
    assert all(w is window for w in kept)  # the others untouched, turns included
    assert _objective(0.0).drop_captions(_batch(window, indices[:50])) == [window] * 50
    # another training seed drops other samples
    other = [w.caption == "" for w in _objective(0.3, seed=1).drop_captions(_batch(window, indices))]
    assert other != dropped


def test_a_dropped_sample_is_trained_on_the_guidance_unconditional(two_turn_clip: Mixture) -> None:
    """The model call of a dropped sample gets the empty text's tokens and no instruction turn."""
    window = two_turn_window(two_turn_clip)
    assert window.turns and window.caption
    objective = _objective(0.3)
    flags = [w.caption == "" for w in objective.drop_captions(_batch(window, list(range(40))))]
    dropped, kept = flags.index(True), flags.index(False)
    empty = objective.text_encoder.encode([""])

    def seen(index: int) -> dict[str, Any]:
        calls: dict[str, Any] = {}

        def forward(x: torch.Tensor, **kw: Any) -> torch.Tensor:
            calls.update(kw)
            return objective.model(x, **kw)  # type: ignore[no-any-return]

        with torch.no_grad():
            objective.loss(_batch(window, [index]), forward)
        return calls

    cond = seen(dropped)["conditioning"]
    assert torch.equal(cond.text_tokens, empty.tokens) and torch.equal(cond.text_mask, empty.mask)
    assert cond.turns is None or not cond.turns.mask.any()
    full = seen(kept)["conditioning"]
    assert full.turns is not None and full.turns.mask.any()
    assert full.text_mask.sum() > empty.mask.sum()
