"""Serving ``models:/worldloop@champion`` follows promotions and rollbacks (real MLflow on sqlite).

The generator replica class runs here without Ray: its registry check, the engine swap and what a
running session sees (its stream is gone from the new engine, so the ingress rebuilds it from the last
frame — see test_serving.py for that path end to end).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from serving_fixtures import write_responsive_checkpoint

from worldloop.serving.engine import SessionNotFound
from worldloop.settings import Settings, get_settings

ALICE = "alice@example.com"
SCORES = {
    "interbench": dict.fromkeys(("trigger", "alignment", "fluency", "scope", "end_state", "physics"), 0.5),
    "judge": {"name": "synthworld", "held_out_accuracy": 0.99},
}


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    # the quality rule of the gate has its own tests (tests/components/registry/test_registry.py)
    env = {"HOME": str(home), "APPROVERS": ALICE, "IDENTITY": ALICE, "GATE_BASELINE_METRICS": ""}
    for name, value in env.items():
        monkeypatch.setenv(f"WORLDLOOP_{name}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_generator_follows_champion_across_promotion_and_rollback(tmp_path: Path, registry: Settings) -> None:
    from worldloop.components.registry import approve, promote, register_version, rollback
    from worldloop.serving.config import EngineConfig
    from worldloop.serving.generator import Generator

    versions = []
    for seed in (0, 1):
        folder = write_responsive_checkpoint(tmp_path / f"run{seed}", seed=seed)
        versions.append(register_version(folder, scores=SCORES, settings=registry).version)
    approve(versions[0], reason="first", settings=registry)
    promote(versions[0], settings=registry)

    async def scenario() -> None:
        generator = Generator(EngineConfig(model="models:/worldloop@champion", device="cpu"), poll_s=3600)
        assert generator.engine.info.version == str(versions[0])
        assert not await generator.check_for_update()  # nothing moved

        image = np.full((64, 64, 3), 100, np.uint8)
        first = await generator.engine.start("s", image=image, prompt="a room", seed=3)
        old = [b async for b in generator.engine.generate("s", keys=["w"])][0]

        approve(versions[1], reason="better", settings=registry)
        promote(versions[1], settings=registry)
        assert await generator.check_for_update()
        assert generator.engine.info.version == str(versions[1])
        assert not await generator.engine.holds("s")  # rebuilt from its last frame by the ingress
        with pytest.raises(SessionNotFound):
            [b async for b in generator.engine.generate("s")]

        again = await generator.engine.start("s", image=image, prompt="a room", seed=3)
        new = [b async for b in generator.engine.generate("s", keys=["w"])][0]
        assert not np.array_equal(old.frames, new.frames)  # other weights (and VAE seed), other video
        assert first.frames.shape == again.frames.shape

        rollback(settings=registry)
        assert await generator.check_for_update()
        assert generator.engine.info.version == str(versions[0])
        await generator.engine.shutdown()

    asyncio.run(scenario())
