"""Stage 1 on a Ray cluster of two nodes started on this machine (``ray start``: a head and a second
node, one CPU each, so the two Ray Train workers land one per node), submitted through Ray's Job
Submission API as a KubeRay RayJob's submitter does: two workers (gloo) with batch 1 follow the loss
curve of one process with batch 2 on the same global batch and end with its parameters and EMA, as
the torchrun test (``test_distributed.py``) asks of two torchrun processes.

The output is ``s3://`` (a local S3 server) and each node has its own ``WORLDLOOP_HOME``, so the
ranks share no folder, as pods on different nodes do: the first job stops after step 2 (a killed
job), the job submitted again pulls the latest checkpoint from the bucket on every rank and resumes —
with ZeRO-2, so each rank's optimizer shard travels through the bucket too (each rank uploads its
own)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_ray_cluster import LocalRayCluster, NodeSpec, start_cluster
from train_launch import assert_matches_one_process, small_config, train_cli

from worldloop import storage
from worldloop.cli.main import run
from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.config_io import dump_yaml
from worldloop.model.train.config import stage_preset
from worldloop.platform.checkpoints import CheckpointMirror
from worldloop.settings import Settings, get_settings

STEPS = 4
S3_BUCKET = "worldloop-test"  # created by the s3_endpoint fixture (tests/conftest.py)


def _config(path: Path, batch: int, zero: int) -> Path:
    return small_config(path, "action", batch=batch, zero=zero, steps=STEPS)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-training")
    write_dataset(root / "data", SynthConfig(size=64, frames=17), clips=2, seed=6)
    return root / "data"


@pytest.fixture
def cluster(tmp_path: Path, s3_endpoint: str) -> Iterator[LocalRayCluster]:
    """Head + one more node; the nodes' environment is what a RayJob's pods get from the settings
    ConfigMap and the S3 Secret."""
    env = {
        "WORLDLOOP_S3_ENDPOINT_URL": s3_endpoint,
        "WORLDLOOP_S3_ACCESS_KEY_ID": "test",
        "WORLDLOOP_S3_SECRET_ACCESS_KEY": "test",
    }
    nodes = [NodeSpec(num_cpus=1, env={"WORLDLOOP_HOME": str(tmp_path / f"home-{i}")}) for i in range(2)]
    running = start_cluster(nodes, env=env)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_ray_nodes_match_one_process(
    tmp_path: Path, data: Path, cluster: LocalRayCluster, s3_settings: Settings
) -> None:
    one = tmp_path / "one"
    train_cli(
        ["--stage", "action", "--data", str(data), "--out", str(one), "--no-track"]
        + ["--config", str(_config(tmp_path / "one.yaml", batch=2, zero=0))],
        nproc=1,
    )
    out = f"s3://{S3_BUCKET}/ray-training/{tmp_path.name}"
    result = tmp_path / "result.json"
    job = [sys.executable, "-m", "worldloop.cli.main", "train", "--stage", "action", "--data", str(data)]
    job += ["--out", out, "--config", str(_config(tmp_path / "two.yaml", batch=1, zero=2))]
    job += ["--workers", "2", "--ray-address", "auto", "--no-track", "--result", str(result)]
    for steps in (["--steps", "2"], []):  # stopped after step 2, then submitted again: it resumes
        status, logs = cluster.run_job(job + steps)
        assert status == "SUCCEEDED", logs[-4000:]
    summary = json.loads(result.read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS and len(summary["losses"]) == 2
    assert len(set(summary["nodes"])) == 2, "one worker per node"
    assert "resumed from" in logs and f"step-{2:08d}" in logs
    for i in range(2):  # each rank trained in its own node's folder: nothing shared but the bucket
        assert list((tmp_path / f"home-{i}" / "checkpoint-cache").iterdir())

    two = CheckpointMirror(out, settings=s3_settings).pull(tmp_path / "two")
    assert_matches_one_process(one / f"step-{STEPS:08d}", two / f"step-{STEPS:08d}")


def test_cli_config_from_s3_and_ray_options_only_with_ray(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A RayJob's entrypoint reads its config from the job's folder in S3; Ray's options without Ray
    are an error, not ignored."""
    for key, value in (
        ("ENDPOINT_URL", s3_endpoint),
        ("ACCESS_KEY_ID", "test"),
        ("SECRET_ACCESS_KEY", "test"),
    ):
        monkeypatch.setenv(f"WORLDLOOP_S3_{key}", value)
    get_settings.cache_clear()
    try:
        uri = f"s3://{S3_BUCKET}/cli/{tmp_path.name}/config.yaml"
        storage.write_bytes(uri, dump_yaml(stage_preset("action")).encode())
        assert run(["train", "--stage", "sft", "--config", uri, "--out", str(tmp_path / "o")]) == 2
        assert "--config is for stage action, not sft" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    assert (
        run(["train", "--stage", "action", "--out", str(tmp_path / "o"), "--gpu", "--result", "r.json"]) == 2
    )
    assert "--gpu, --result: for Ray runs only" in capsys.readouterr().err
