"""The registry against a real MLflow on sqlite: registration with lineage and ``candidate``, the
approval-gated promotion (each refusal and the allowed path), rollback, audit tags, and loading a
registered version through ``models:/``."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from worldloop.components.registry import (
    AuditRecord,
    Evidence,
    GatePolicy,
    Refused,
    approve,
    gate,
    list_versions,
    promote,
    register_version,
    rollback,
    show,
)
from worldloop.data.lineage import Lineage, ShardReadRecord, SourceLineage, StageLineage
from worldloop.settings import Settings

DIMS = ("trigger", "alignment", "fluency", "scope", "end_state", "physics")
BASELINE_METRICS = ("rollout.psnr.blocks_1_2", "camera.rotation_deg", "direction.all")
ALICE, BOB = "alice@example.com", "bob@example.com"  # an approver and someone who is not


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", approvers=[ALICE], identity=ALICE, gate_tolerance=0.02)


def _mlflow(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri)


def _checkpoint(root: Path, step: int = 1) -> Path:
    """A stage output folder with one small fake checkpoint and the ``latest`` pointer."""
    folder = root / f"step-{step:08d}"
    folder.mkdir(parents=True)
    for name in ("model", "ema", "optimizer"):
        save_file({"w": torch.full((4,), float(step))}, str(folder / f"{name}.safetensors"))
    config = {"model_preset": "tiny", "seed": 0, "height": 64, "width": 64}
    (folder / "state.json").write_text(json.dumps({"step": step, "config": config}))
    (root / "latest").write_text(folder.name + "\n")
    return folder


def _scores(**overrides: float | None) -> dict[str, Any]:
    return {
        "model": "run",
        "interbench": {d: overrides.get(d, 0.6) for d in DIMS},
        "general": {"psnr": 21.5},
        "suite": {"name": "synthworld-test", "cases": 2},
        "judge": {"name": "synthworld", "held_out_accuracy": 0.99},
    }


def _quality(*, model_psnr: float = 18.0, model_rotation: float = 0.8) -> dict[str, Any]:
    """A quality.json payload: the model beats the random-weight and frozen-frame baselines unless told."""

    def metrics(psnr: float, rotation: float, direction: float) -> dict[str, Any]:
        block = {"rollout.psnr.block1": psnr, "rollout.psnr.block2": psnr}
        return {
            "metrics": {"rollout.psnr.blocks_1_2": psnr, "camera.rotation_deg": rotation, **block}
            | {"direction.all": direction, "camera.translation_deg": None}
        }

    return {
        "contestants": {
            "model": metrics(model_psnr, model_rotation, 1.0),
            "random": metrics(9.5, 2.5, 0.25),
            "frozen": metrics(16.1, 1.2, 0.0),
            "truth": metrics(100.0, 0.3, 1.0),
        },
        "held_out": {"seed": 11, "clips": 4, "blocks": 2, "height": 64, "width": 64},
    }


def _register(tmp_path: Path, settings: Settings, step: int, **scores: float | None) -> int:
    out = _checkpoint(tmp_path / f"run{step}", step).parent
    return register_version(out, scores=_scores(**scores), quality=_quality(), settings=settings).version


def _champion(settings: Settings) -> int | None:
    aliases = _mlflow(settings).get_registered_model(settings.registered_model).aliases
    return int(aliases["champion"]) if "champion" in aliases else None


def _audit_is_complete(record: AuditRecord, action: str, identity: str, result: str) -> None:
    assert (record.action, record.identity, record.result) == (action, identity, result)
    assert datetime.fromisoformat(record.time).utcoffset() is not None  # UTC, with its offset
    assert record.reasons and all(r.strip() for r in record.reasons)


def test_register_sets_candidate_and_lineage(tmp_path: Path, settings: Settings) -> None:
    mlflow = _mlflow(settings)
    mlflow.create_experiment("pipeline", artifact_location=(tmp_path / "art").as_uri())
    parent = mlflow.create_run(mlflow.get_experiment_by_name("pipeline").experiment_id).info.run_id
    folder = _checkpoint(tmp_path / "stage")
    read = ShardReadRecord(name="shards/shard-00000.tar", sha256="ab" * 32, clips_read=5)
    sources = [
        SourceLineage(uri="s3://data/curated", weight=0.5, kind="curated", clips=9, shards_read=[read]),
        SourceLineage(uri="s3://data/synth", weight=0.5, kind="synthworld", clips=4, shards_read=[]),
    ]
    lineage = Lineage(stages=[StageLineage(stage="action", sources=sources)])
    (folder / "lineage.json").write_text(lineage.model_dump_json())
    report = tmp_path / "report"
    report.mkdir()
    (report / "scores.json").write_text(json.dumps(_scores(physics=0.4)))
    (report / "report.html").write_text("<html></html>")

    info = register_version(folder.parent, report_dir=report, pipeline_run_id=parent, settings=settings)
    assert (info.version, info.aliases) == (1, ("candidate",))
    assert info.scores == {d: 0.4 if d == "physics" else 0.6 for d in DIMS}
    assert info.lineage["pipeline_run_id"] == parent
    assert json.loads(info.lineage["data"]) == [
        {
            "stage": "action",
            "sources": [
                {"uri": "s3://data/curated", "weight": 0.5, "kind": "curated", "shards_read": 1},
                {"uri": "s3://data/synth", "weight": 0.5, "kind": "synthworld", "shards_read": 0},
            ],
        }
    ]
    assert info.lineage["data_sha256"] == hashlib.sha256((folder / "lineage.json").read_bytes()).hexdigest()
    assert info.lineage["checkpoint"] == str(folder) and info.lineage["checkpoint_step"] == folder.name
    assert json.loads(info.lineage["config"])["model_preset"] == "tiny"
    assert len(info.lineage["config_sha256"]) == 64 and info.approval is None and info.audit == ()

    run = mlflow.get_run(info.run_id or "")
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["interbench.physics"] == pytest.approx(0.4)
    assert run.data.metrics["general.psnr"] == pytest.approx(21.5)
    files = {a.path for a in mlflow.list_artifacts(info.run_id or "", "checkpoint")}
    assert files == {
        "checkpoint/model.safetensors",
        "checkpoint/ema.safetensors",
        "checkpoint/state.json",
        "checkpoint/lineage.json",
    }
    assert {a.path for a in mlflow.list_artifacts(info.run_id or "", "interbench")} >= {
        "interbench/report.html",
        "interbench/scores.json",
    }

    second = register_version(_checkpoint(tmp_path / "stage2", 2), scores=_scores(), settings=settings)
    assert second.aliases == ("candidate",) and show(1, settings=settings).aliases == ()
    assert [v.version for v in list_versions(settings=settings)] == [2, 1]


def test_register_rejects_bad_scores(tmp_path: Path, settings: Settings) -> None:
    out = _checkpoint(tmp_path / "stage").parent
    with pytest.raises(ValueError, match="exactly trigger"):
        register_version(out, scores={"interbench": {"trigger": 0.5}}, settings=settings)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        register_version(tmp_path / "missing", settings=settings)


def test_promotion_refused_without_approval(tmp_path: Path, settings: Settings) -> None:
    version = _register(tmp_path, settings, 1)
    with pytest.raises(Refused, match=r"v1 is not approved") as refused:
        promote(version, settings=settings)
    assert len(refused.value.reasons) == 1 and _champion(settings) is None
    (record,) = show(version, settings=settings).audit
    _audit_is_complete(record, "promote", ALICE, "refused")
    assert record.gate is not None and record.gate.passed  # the approval alone was missing
    with pytest.raises(Refused, match="worldloop has no champion to roll back"):
        rollback(settings=settings)
    model_tags = _mlflow(settings).get_registered_model("worldloop").tags  # no version concerned
    no_champion = AuditRecord.model_validate_json(model_tags["audit.0001"])
    _audit_is_complete(no_champion, "rollback", ALICE, "refused")


def test_non_approvers_can_neither_approve_nor_promote(tmp_path: Path, settings: Settings) -> None:
    version = _register(tmp_path, settings, 1)
    with pytest.raises(Refused, match=f"{BOB} is not an authorised approver"):
        approve(version, reason="looks fine", identity=BOB, settings=settings)
    assert show(version, settings=settings).approval is None
    with pytest.raises(ValueError, match="needs a reason"):
        approve(version, reason="  ", settings=settings)

    approve(version, reason="InterBench report reviewed", settings=settings)
    with pytest.raises(Refused, match=f"may not promote: {BOB} is not an authorised approver"):
        promote(version, identity=BOB, settings=settings)
    # An approval counts only while its approver is still listed.
    carol = settings.model_copy(update={"approvers": ["carol@example.com"], "identity": "carol@example.com"})
    with pytest.raises(Refused, match=f"approval does not count: {ALICE} is not an authorised approver"):
        promote(version, settings=carol)
    assert _champion(settings) is None

    audit = show(version, settings=settings).audit
    assert [(r.action, r.identity, r.result) for r in audit] == [
        ("approve", BOB, "refused"),
        ("approve", ALICE, "allowed"),
        ("promote", BOB, "refused"),
        ("promote", "carol@example.com", "refused"),
    ]
    for record in audit:
        _audit_is_complete(record, record.action, record.identity, record.result)


def test_gate_failure_names_the_dimension(tmp_path: Path, settings: Settings) -> None:
    first = _register(tmp_path, settings, 1)
    approve(first, reason="baseline", settings=settings)
    promote(first, settings=settings)
    worse = _register(tmp_path, settings, 2, physics=0.5, fluency=0.59)  # physics −0.1, fluency within
    approve(worse, reason="try it", settings=settings)
    with pytest.raises(Refused, match=r"InterBench gate failed: physics 0\.500 is 0\.100 below") as refused:
        promote(worse, settings=settings)
    assert len(refused.value.reasons) == 1 and "fluency" not in str(refused.value)
    assert _champion(settings) == first
    record = show(worse, settings=settings).audit[-1]
    _audit_is_complete(record, "promote", ALICE, "refused")
    assert record.gate is not None and not record.gate.passed
    assert [c.dimension for c in record.gate.checks if not c.passed] == ["physics"]
    # A looser gate in settings lets it through.
    promote(worse, settings=settings.model_copy(update={"gate_tolerance": 0.1}))
    assert _champion(settings) == worse


def test_promote_then_rollback_restores_previous_champions(tmp_path: Path, settings: Settings) -> None:
    versions = [_register(tmp_path, settings, step, trigger=0.5 + step / 10) for step in (1, 2, 3)]
    for version in versions:
        approve(version, reason=f"v{version} reviewed", settings=settings)
        decision = promote(version, settings=settings)
        assert decision.champion_after == version and _champion(settings) == version
        assert "champion" in decision.version.aliases
    info = show(3, settings=settings)
    tags = _mlflow(settings).get_model_version(settings.registered_model, "3").tags
    assert tags["promotion.previous_champion"] == "2" and tags["promotion.identity"] == ALICE
    assert info.approval is not None and info.approval.reason == "v3 reviewed"
    promoted = info.audit[-1]
    _audit_is_complete(promoted, "promote", ALICE, "allowed")
    assert (promoted.champion_before, promoted.champion_after) == (2, 3)
    assert any("approved by" in r for r in promoted.reasons)
    with pytest.raises(Refused, match="already the champion"):
        promote(3, settings=settings)

    assert rollback(settings=settings).champion_after == 2 and _champion(settings) == 2
    assert rollback(settings=settings).champion_after == 1 and _champion(settings) == 1
    with pytest.raises(Refused, match="champion v1 has no previous champion to restore"):
        rollback(settings=settings)
    with pytest.raises(Refused, match="may not roll back"):
        rollback(identity=BOB, settings=settings)
    assert _champion(settings) == 1

    rolled = [r for r in show(2, settings=settings).audit if r.action == "rollback"]
    assert [(r.champion_before, r.champion_after) for r in rolled] == [(3, 2), (2, 1)]
    for record in rolled:
        _audit_is_complete(record, "rollback", ALICE, "allowed")
    refused = [r for r in show(1, settings=settings).audit if r.result == "refused"]
    assert [r.identity for r in refused] == [ALICE, BOB]


def _evidence(version: int, scores: dict[str, float | None] | None = None, **kw: Any) -> Evidence:
    quality = kw.pop("quality", _quality()["contestants"])
    quality = {k: v["metrics"] for k, v in quality.items()} if quality else None
    setup = kw.pop("setup", {"suite": "s", "judge": "synthworld", "cases": "2"})
    return Evidence(version=version, scores=scores, setup=setup, quality=quality, **kw)


def test_gate_rules() -> None:
    scores = {d: 0.5 for d in DIMS}
    policy = GatePolicy(tolerance=0.02, baseline_metrics=BASELINE_METRICS)
    first = gate(_evidence(2, scores), champion=None, policy=policy)
    assert first.passed and first.reasons[-1] == "no champion yet: nothing to regress against"
    unscored = gate(_evidence(2, None), champion=None, policy=policy)
    assert not unscored.passed and "no InterBench scores" in unscored.reasons[0]
    champion = _evidence(1, scores)
    edge = gate(_evidence(2, scores | {"scope": 0.48}), champion=champion, policy=policy)
    assert edge.passed  # exactly the tolerance below
    missing = gate(_evidence(2, scores | {"trigger": None}), champion=champion, policy=policy)
    assert not missing.passed and missing.reasons == ["trigger has no score (champion v1: 0.500)"]
    unknown = gate(_evidence(2, scores), champion=_evidence(1, scores | {"trigger": None}), policy=policy)
    assert unknown.passed and len([c for c in unknown.checks if c.dimension in DIMS]) == 6


def test_gate_wants_both_baselines_beaten() -> None:
    scores = {d: 0.5 for d in DIMS}
    policy = GatePolicy(baseline_metrics=BASELINE_METRICS)
    unmeasured = gate(_evidence(2, scores, quality=None), champion=None, policy=policy)
    assert not unmeasured.passed and "not measured on the quality ladder" in unmeasured.reasons[0]
    below_frozen = _quality(model_psnr=15.0)["contestants"]  # frozen scores 16.1 dB
    refused = gate(_evidence(2, scores, quality=below_frozen), champion=None, policy=policy)
    assert not refused.passed
    assert refused.reasons == ["rollout.psnr.blocks_1_2 15.000 does not beat the frozen baseline's 16.100"]
    wrong_camera = _quality(model_rotation=3.0)["contestants"]  # random 2.5°: worse than random weights
    assert (
        "camera.rotation_deg 3.000 does not beat the random baseline's 2.500"
        in gate(_evidence(2, scores, quality=wrong_camera), champion=None, policy=policy).reasons
    )
    assert gate(_evidence(2, scores, quality=None), champion=None, policy=GatePolicy()).passed  # rule off


def test_gate_floors_and_comparable_setups() -> None:
    scores = {d: 0.5 for d in DIMS}
    floors = GatePolicy(floors={"trigger": 0.6, "camera.rotation_deg": 0.5, "rollout.psnr.blocks_1_2": 17.0})
    result = gate(_evidence(2, scores), champion=None, policy=floors)
    assert not result.passed and result.reasons == [
        "camera.rotation_deg 0.800 misses its floor (at most 0.5)",
        "trigger 0.500 misses its floor (at least 0.6)",
    ]
    other_suite = _evidence(1, scores, setup={"suite": "t", "judge": "synthworld", "cases": "2"})
    refused = gate(_evidence(2, scores), champion=other_suite, policy=GatePolicy())
    assert not refused.passed and "not comparable" in refused.reasons[0] and "suite t" in refused.reasons[0]
    fewer_cases = _evidence(1, scores, setup={"suite": "s", "judge": "synthworld", "cases": "1"})
    assert not gate(_evidence(2, scores), champion=fewer_cases, policy=GatePolicy()).passed


def test_models_uri_loads_the_registered_weights(tmp_path: Path, settings: Settings) -> None:
    from worldloop.model.spec import build_modules, preset_spec, write_spec
    from worldloop.model.train.checkpoint import rng_state
    from worldloop.platform.stack import load_model_stack

    spec = preset_spec("tiny", height=64, width=64)
    model, vae = build_modules(spec, seed=3)
    folder = tmp_path / "stage" / "step-00000007"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(folder / "vae.safetensors"))
    write_spec(folder, spec)
    config = {"model_preset": "tiny", "seed": 0, "height": 64, "width": 64}
    (folder / "state.json").write_text(json.dumps({"step": 7, "config": config, "rng": rng_state()}))
    register_version(folder, settings=settings)

    stack = load_model_stack("models:/worldloop@candidate", settings=settings)
    saved = load_file(str(folder / "model.safetensors"))
    loaded = stack.model.state_dict()
    assert stack.preset == "tiny" and (stack.spec.height, stack.spec.width) == (64, 64) and stack.version == 1
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert load_model_stack("models:/worldloop/1", settings=settings).checkpoint == stack.checkpoint  # cached
    with pytest.raises(ValueError, match="no alias 'champion'"):
        load_model_stack("models:/worldloop@champion", settings=settings)
    with pytest.raises(ValueError, match="expected models:/NAME@ALIAS"):
        load_model_stack("models:/worldloop", settings=settings)


def test_quality_tags_keep_the_decoded_i2v_input_beside_the_baselines() -> None:
    from worldloop.cli.demo import quality_table
    from worldloop.components.registry.evidence import quality_tags
    from worldloop.components.registry.tags import QUALITY

    payload = _quality()
    assert set(json.loads(quality_tags(payload)[QUALITY])) == {"model", "random", "frozen"}
    payload["contestants"]["plane"] = payload["contestants"]["frozen"]
    kept = json.loads(quality_tags(payload)[QUALITY])
    assert set(kept) == {"model", "random", "frozen", "plane"} and kept["plane"]["direction.all"] == 0.0
    evidence = _evidence(3, quality={name: {"metrics": metrics} for name, metrics in kept.items()})
    table = quality_table(SimpleNamespace(version=3, evidence=evidence))  # type: ignore[arg-type]
    assert [c.header for c in table.columns] == ["metric", "model", "random", "frozen", "plane"]
    assert "plane: the model's I2V input decoded" in str(table.caption)
