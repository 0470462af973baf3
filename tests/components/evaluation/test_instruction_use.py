"""The instruction-use measure: a model that cannot see its instruction scores the true, a wrong and no
instruction alike (gains and ``toward`` exactly 0); one that sees it does not."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from worldloop.components.evaluation.quality.instruction_use import instruction_use
from worldloop.components.evaluation.suite import build_synthworld_suite
from worldloop.model import WorldModel
from worldloop.platform.stack import load_model_stack


class Unseen(nn.Module):
    """An interaction extractor whose tokens are all masked out: the instruction never reaches the DiT."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, tokens: Tensor | None, mask: Tensor | None, *, batch: int) -> tuple[Tensor, Tensor]:
        out, seen = self.inner(tokens, mask, batch=batch)
        return out, torch.zeros_like(seen)


def _with_output(model: WorldModel) -> WorldModel:
    for e in range(model.cfg.num_experts):
        torch.nn.init.normal_(model.expert(e).head.head.weight, std=0.02)
    return model


def test_instruction_use_sees_whether_the_instruction_reaches_the_model(tmp_path) -> None:
    suite = build_synthworld_suite(tmp_path, cases=2, size=64, frames=17, seed=5, multi_turn_every=0)
    torch.manual_seed(3)
    stack = load_model_stack("preset:tiny", seed=3)
    stack = replace(stack, model=_with_output(stack.model))
    seen = instruction_use(stack, suite, sigmas=(0.5, 0.9), repeats=1)
    assert set(seen) == {
        "x0_mse.true", "x0_mse.wrong", "x0_mse.none", "gain.wrong", "gain.none", "toward", "toward.0.5",
        "toward.0.9", "cases",
    }  # fmt: skip
    # the mean over the noise levels, and each level on its own (which expert reads the instruction)
    assert seen["toward"] == pytest.approx((seen["toward.0.5"] + seen["toward.0.9"]) / 2)
    assert seen["toward.0.5"] != seen["toward.0.9"]
    assert seen["cases"] == 2 and seen["x0_mse.true"] > 0
    assert seen["gain.none"] != 0.0 and seen["gain.wrong"] != 0.0 and seen["toward"] != 0.0

    stack.model.interaction = Unseen(stack.model.interaction)
    blind = instruction_use(stack, suite, sigmas=(0.9,), repeats=1)
    assert blind["gain.none"] == 0.0 and blind["gain.wrong"] == 0.0 and blind["toward"] == 0.0
    assert blind["x0_mse.true"] > 0

    with pytest.raises(ValueError, match="at least 2"):
        instruction_use(stack, suite, cases=1)
