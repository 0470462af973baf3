"""The engine's ``compile`` option: off | blocks | step, with the boolean it used to be still accepted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worldloop.serving.app import ServeOptions
from worldloop.serving.config import EngineConfig
from worldloop.serving.engine import Streams


@pytest.mark.parametrize(
    ("given", "mode"),
    [
        (True, "blocks"),
        (False, "off"),
        ("true", "blocks"),
        ("False", "off"),
        ("step", "step"),
        ("off", "off"),
    ],
)
def test_compile_takes_a_mode_or_the_old_boolean(given: object, mode: str) -> None:
    assert EngineConfig(compile=given).compile == mode  # type: ignore[arg-type]
    assert ServeOptions.parse({"compile": given}).engine.compile == mode  # build_app's path (strings)


def test_compile_refuses_unknown_modes_and_a_step_graph_over_several_devices() -> None:
    with pytest.raises(ValidationError, match="blocks"):
        EngineConfig(compile="fast")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="one device"):
        EngineConfig(compile="step", sp=2)
    assert EngineConfig(compile="blocks", sp=2).sp == 2


def test_streams_build_the_rollout_the_mode_asks_for() -> None:
    eager = Streams(EngineConfig(model="preset:tiny", device="cpu"))
    assert eager.rollout.compiled is None
    step = Streams(EngineConfig(model="preset:tiny", device="cpu", compile="step"))
    compiled = step.rollout.compiled
    assert compiled is not None and compiled.mode == "default" and not compiled.graphs  # no CUDA graphs
    assert step._model_thread is None  # a thread of its own only where CUDA graphs are recorded
    blocks = Streams(EngineConfig(model="preset:tiny", device="cpu", compile=True))
    assert blocks.rollout.compiled is None
    assert all(b._compiled_call_impl is not None for b in blocks.rollout.model.expert(0).blocks)
