"""``--host``: submission to a KFP API server over its v2beta1 REST API (a local HTTP server here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kfp_server import FakeKfp
from mlflow import MlflowClient

from worldloop.cli.main import run
from worldloop.pipelines.catalog import compile_pipeline
from worldloop.pipelines.submit import submit
from worldloop.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def test_submit_uploads_the_compiled_ir_and_runs_with_the_parameters(
    tmp_path: Path, settings: Settings
) -> None:
    fake = FakeKfp(polls_before_done=2)
    server, url = fake.serve()
    try:
        done = submit(
            "full", {"clips": "3", "preset": "tiny"}, host=url, poll_s=1, timeout_s=60, settings=settings
        )
    finally:
        server.shutdown()
    assert done.state == "SUCCEEDED"
    (pipeline,) = fake.pipelines.values()
    compiled = compile_pipeline("full", tmp_path / "full.yaml")
    assert pipeline["yaml"] == compiled.read_text()
    assert pipeline["display_name"].startswith("worldloop-full-")
    (created,) = fake.runs.values()
    params = created["runtime_config"]["parameters"]
    assert params["clips"] == 3 and params["preset"] == "tiny" and params["max_steps"] == 0
    assert params["parent_run_id"] == done.parent_run_id
    version = fake.versions[pipeline["pipeline_id"]]
    assert created["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    assert ("POST", "/apis/v2beta1/runs") in fake.requests
    parent = MlflowClient(settings.resolved_mlflow_uri).get_run(done.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["worldloop.kfp_run"] == done.run_id
    assert yaml.safe_load_all(pipeline["yaml"])  # valid YAML


def test_failed_run_is_a_clear_error_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("WORLDLOOP_HOME", str(tmp_path / "home"))
    from worldloop.settings import get_settings

    get_settings.cache_clear()
    fake = FakeKfp(final_state="FAILED", polls_before_done=0)
    server, url = fake.serve()
    try:
        code = run(["pipeline", "run", "evaluation", "--host", url, "-p", "cases=2"])
        ok = FakeKfp(polls_before_done=0)
        server2, url2 = ok.serve()
        try:
            assert run(["pipeline", "run", "curation", "--host", url2, "-p", "source_uri=s3://b/raw"]) == 0
        finally:
            server2.shutdown()
    finally:
        server.shutdown()
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "worldloop: error: KFP run" in err and "ended FAILED: task train-stage-3 failed: out of memory" in err
    )
    (created,) = ok.runs.values()
    assert created["runtime_config"]["parameters"]["source_uri"] == "s3://b/raw"
