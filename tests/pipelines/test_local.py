"""Local runs through ``kfp.local``: parent/child MLflow runs and the fingerprint cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from worldloop.components.synthworld import SynthConfig, write_raw
from worldloop.pipelines import local
from worldloop.pipelines.local import run_local
from worldloop.settings import Settings

S3_BUCKET = "worldloop-test"  # created by the s3_endpoint fixture (conftest.py)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    write_raw(out, SynthConfig(size=64, frames=17), clips=3, seed=0, bad_fraction=0.34)
    return out


def test_curation_runs_locally_and_an_unchanged_rerun_is_cached(
    tmp_path: Path, raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another checkout's edits must not change the key between the two runs of this test.
    monkeypatch.setattr(local, "code_version", lambda: "fixed")
    monkeypatch.setenv("WORLDLOOP_HOME", str(tmp_path / "home"))  # the steps' own settings
    settings = Settings(home=tmp_path / "home")
    args: dict[str, str | int | float | bool] = {"source_uri": str(raw), "executor": "local"}
    first = run_local("curation", args, settings=settings)
    curated = first.outputs["Output"]
    assert first.steps_run == 1 and first.steps_cached == 0
    assert (Path(curated.path) / "manifest.jsonl").read_text().strip()
    mlflow = MlflowClient(settings.resolved_mlflow_uri)
    parent = mlflow.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["source_uri"] == str(raw)
    children = mlflow.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{first.parent_run_id}'"
    )
    assert [c.info.run_name for c in children] == ["curate"]
    assert children[0].data.metrics["sources"] == 3

    again = run_local("curation", args, settings=settings)
    assert again.steps_run == 0 and again.steps_cached == 1 and again.parent_run_id != first.parent_run_id
    assert again.outputs["Output"].uri == curated.uri  # the first run's output, not a new one

    monkeypatch.setattr(local, "code_version", lambda: "changed")
    assert run_local("curation", args, settings=settings).steps_run == 1


def test_fingerprint_ignores_the_parent_run_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    base = local.fingerprint("full", {"clips": 2, "parent_run_id": "a"}, settings)
    assert base == local.fingerprint("full", {"clips": 2, "parent_run_id": "b"}, settings)
    assert base != local.fingerprint("full", {"clips": 3, "parent_run_id": "a"}, settings)
    assert base != local.fingerprint("full", {"clips": 2}, Settings(home=tmp_path / "other"))
    assert len(local.code_version()) == 64


def test_evaluation_runs_locally_and_an_unchanged_rerun_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "code_version", lambda: "fixed")
    monkeypatch.setenv("WORLDLOOP_HOME", str(tmp_path / "home"))
    settings = Settings(home=tmp_path / "home")
    args: dict[str, str | int | float | bool] = {"model_uri": "preset:tiny", "cases": 2, "suite_cases": 2}
    first = run_local("evaluation", args, settings=settings)
    metrics = first.outputs["Output"]
    assert first.steps_run == 1
    assert set(metrics.metadata) >= {"interbench_trigger", "interbench_physics", "psnr"}
    again = run_local("evaluation", args, settings=settings)
    assert (again.steps_run, again.steps_cached) == (0, 1)
    assert again.outputs["Output"].metadata == metrics.metadata


def test_a_failed_step_fails_the_run_and_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLDLOOP_HOME", str(tmp_path / "home"))
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(RuntimeError, match="pipeline curation failed") as failed:
        run_local(
            "curation", {"source_uri": str(tmp_path / "missing"), "executor": "local"}, settings=settings
        )
    parent_id = str(failed.value).split("MLflow run ")[1].split(")")[0]
    assert MlflowClient(settings.resolved_mlflow_uri).get_run(parent_id).info.status == "FAILED"


@pytest.mark.slow
def test_full_trains_on_the_curated_clips_of_a_users_s3_folder(
    tmp_path: Path, s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``worldloop synth --raw`` writes raw pairs; uploaded to S3 they are the ``source_uri`` of the full
    pipeline, and the registered version's lineage shows every stage read their curated clips (mixed
    with SynthWorld's labelled ones)."""
    import json
    import subprocess
    import sys
    import uuid

    from worldloop import storage
    from worldloop.components.registry import show
    from worldloop.data import ClipStore

    raw = tmp_path / "raw"
    made = subprocess.run(
        [sys.executable, "-c", "from worldloop.cli.main import main; main()", "synth", "--raw"]
        + ["--out", str(raw), "--clips", "3", "--frames", "17", "--size", "64", "--bad-fraction", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    source = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}/raw"
    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        storage.upload_file(
            path, storage.join(source, path.relative_to(raw).as_posix()), settings=s3_settings
        )

    for name, value in {
        "WORLDLOOP_HOME": str(tmp_path / "home"),
        "WORLDLOOP_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
        "WORLDLOOP_S3_ACCESS_KEY_ID": "test",
        "WORLDLOOP_S3_SECRET_ACCESS_KEY": "test",
    }.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings(home=tmp_path / "home", s3_endpoint_url=s3_settings.s3_endpoint_url)
    arguments: dict[str, str | int | float | bool] = {
        "clips": 2,
        "raw_clips": 2,
        "max_steps": 1,
        "eval_cases": 2,
        "suite_cases": 2,
        "quality_clips": 1,
        "quality_blocks": 1,
        "quality_cases": 2,
        "curation_executor": "local",
        "source_uri": source,
        "synthetic_weight": 0.25,
        "long_clips": 1,
        "long_frames": 41,
    }
    run = run_local("full", arguments, settings=settings)
    info = show(int(str(run.outputs["Output"])), settings=settings)
    data = json.loads(info.lineage["data"])
    assert [s["stage"] for s in data] == ["vae", "action", "instruction", "distill", "long"]
    for stage in data:
        kinds = [(s["kind"], s["weight"]) for s in stage["sources"]]
        assert kinds == [("curated", 0.75), ("synthworld", 0.25)], stage
    assert sum(stage["sources"][0]["shards_read"] for stage in data) > 0  # curated clips were read
    assert data[0]["sources"][1]["uri"] != data[-1]["sources"][1]["uri"]  # stage 4: the long clips
    curated = data[1]["sources"][0]["uri"]
    store = ClipStore(curated)
    assert store.index.clips >= 3  # every raw pair kept (no defects asked for)
    sources_read = {store.load(*ref).meta.source for ref in store.clips()}
    assert all(s.startswith(source + "/") for s in sources_read), sources_read
