"""Serving follows ``champion`` only along a signed promotion chain (real MLflow on sqlite).

Each way around the promotion gate — the alias moved with the MLflow client, the alias moved back to
an earlier champion, a signed tag changed after the promotion, records signed under another key — is
refused by a running replica, which keeps serving the version it has and reports the refusal; a new
replica does not start on such a champion, and ``load_model_stack`` does not load it.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from pydantic import SecretStr
from serving_fixtures import write_responsive_checkpoint

from worldloop.platform.registry import UnverifiedChampion
from worldloop.settings import Settings, get_settings

ALICE = "alice@example.com"
SCORES = {
    "interbench": dict.fromkeys(("trigger", "alignment", "fluency", "scope", "end_state", "physics"), 0.5),
    "judge": {"name": "synthworld", "held_out_accuracy": 0.99},
}
CHAMPION = "models:/worldloop@champion"
# attack → what the refusal says
REFUSALS = {
    "forged_alias": r"the promotion gate made v1 champion \(the alias was moved outside it\)",
    "replayed_alias": r"the promotion gate made v2 champion \(the alias was moved outside it\)",
    "tampered_tag": r"its evidence tags \(lineage\.\*, interbench\.\*, quality\.\*\) changed since v2",
    "wrong_key": r"the champion record does not verify under this key",
}


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {"HOME": str(tmp_path / "home"), "APPROVERS": ALICE, "IDENTITY": ALICE, "GATE_BASELINE_METRICS": ""}
    for name, value in env.items():
        monkeypatch.setenv(f"WORLDLOOP_{name}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _go_around_the_gate(attack: str, registry: Settings, second: int) -> None:
    """Make ``champion`` name version ``second`` without the gate's valid signature."""
    from worldloop.components.registry import approve, promote

    mlflow = MlflowClient(
        tracking_uri=registry.resolved_mlflow_uri, registry_uri=registry.resolved_mlflow_uri
    )
    if attack == "forged_alias":  # never approved: MLflow write access is all it takes to move an alias
        mlflow.set_registered_model_alias("worldloop", "champion", str(second))
    elif attack == "tampered_tag":  # promoted through the gate, then its evidence rewritten
        approve(second, reason="reviewed", settings=registry)
        promote(second, settings=registry)
        better = json.dumps(dict.fromkeys(SCORES["interbench"], 0.99))
        mlflow.set_model_version_tag("worldloop", str(second), "interbench.scores", better)
    elif attack == "wrong_key":  # the gate's rules, run with a key serving does not hold
        other = registry.model_copy(update={"signing_key": SecretStr("not the key serving verifies with!")})
        approve(second, reason="reviewed", settings=other)
        promote(second, settings=other)
    else:
        raise AssertionError(attack)


@pytest.mark.parametrize("attack", ["forged_alias", "replayed_alias", "tampered_tag", "wrong_key"])
def test_serving_refuses_a_champion_the_gate_did_not_sign(
    tmp_path: Path, registry: Settings, attack: str
) -> None:
    from worldloop.components.registry import approve, promote, register_version
    from worldloop.platform.stack import load_model_stack
    from worldloop.serving.config import EngineConfig
    from worldloop.serving.generator import Generator

    first, second = (
        register_version(
            write_responsive_checkpoint(tmp_path / f"run{seed}", seed=seed), scores=SCORES
        ).version
        for seed in (0, 1)
    )
    served = [first] if attack != "replayed_alias" else [first, second]
    for version in served:
        approve(version, reason="reviewed", settings=registry)
        promote(version, settings=registry)
    current = served[-1]

    async def scenario() -> None:
        generator = Generator(EngineConfig(model=CHAMPION, device="cpu"), poll_s=3600)
        assert generator.engine.info.version == str(current)
        image = np.full((64, 64, 3), 100, np.uint8)
        await generator.engine.start("s", image=image, prompt="a room", seed=3)

        if attack == "replayed_alias":  # back to an earlier champion, by hand: a rollback the gate never made
            mlflow = MlflowClient(
                tracking_uri=registry.resolved_mlflow_uri, registry_uri=registry.resolved_mlflow_uri
            )
            mlflow.set_registered_model_alias("worldloop", "champion", str(first))
        else:
            _go_around_the_gate(attack, registry, second)

        assert not await generator.check_for_update()
        state = await generator.follow_state()
        assert state.version == str(current) and state.refusals == 1
        assert state.last_refusal is not None and re.search(REFUSALS[attack], state.last_refusal)
        assert not await generator.check_for_update()  # the same refusal on the next poll counts once
        assert (await generator.follow_state()).refusals == 1
        assert await generator.engine.holds("s")  # the running session keeps its stream on the old model
        blocks = [b async for b in generator.engine.generate("s", keys=["w"])]
        assert blocks and generator.engine.info.version == str(current)

        with pytest.raises(UnverifiedChampion, match=REFUSALS[attack]):
            Generator(EngineConfig(model=CHAMPION, device="cpu"), poll_s=3600)  # a new replica: no start
        await generator.engine.shutdown()

    asyncio.run(scenario())
    with pytest.raises(UnverifiedChampion, match=REFUSALS[attack]):
        load_model_stack(CHAMPION, settings=registry)
