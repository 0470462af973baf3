"""The training step with a RayJob template (``ClusterConfig.train_job``), run through its KFP
component function against the fake Kubernetes API server (``tests/fake_kube.py``, real HTTP) with a
stand-in for the KubeRay operator: the step creates the RayJob, streams the submitter pod's log into
its own, waits, fails with the job's message when the job fails, and — retried — deletes the failed
job and submits it again under the same name and folder (where the new job resumes), then pulls the
final checkpoint from S3 into its output artifact."""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_kube import FakeKube, write_user_kubeconfig
from kfp.dsl import Dataset, Model
from safetensors.torch import save_file

from worldloop import storage
from worldloop.components.training.cluster_job import remote_uri
from worldloop.components.training.component import train_stage
from worldloop.components.training.ray_train import RayStageRun
from worldloop.components.training.step import step_config
from worldloop.config_io import dump_yaml
from worldloop.k8s.rayjob import RayJobFailed
from worldloop.pipelines.cluster import ClusterConfig, TrainJobConfig
from worldloop.pipelines.training_job import training_job
from worldloop.platform.checkpoints import CheckpointMirror
from worldloop.settings import Settings, get_settings

S3_BUCKET = "worldloop-test"  # created by the s3_endpoint fixture (tests/conftest.py)
NAMESPACE = "worldloop"
RAYJOBS = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"


def _stamp(second: int, fraction: str = "") -> str:
    return f"2026-01-01T00:00:{second:02d}{fraction}Z"


@dataclass
class FakeKubeRay:
    """What the KubeRay operator does with a RayJob, in short: status Initializing → Running, a
    submitter pod of the job's name whose log is the job's, then Complete/SUCCEEDED (the job's
    outputs written where its entrypoint says) or Failed/FAILED with KubeRay's message. ``fail``:
    how many of the next jobs fail."""

    kube: FakeKube
    settings: Settings
    fail: int = 1
    entrypoints: list[list[str]] = field(default_factory=list)

    def __call__(self, rayjob: dict[str, Any]) -> None:
        threading.Thread(target=self._run, args=(rayjob,), daemon=True).start()

    def _status(self, name: str, **status: str) -> None:
        live = self.kube.get("ray.io/v1", "rayjobs", NAMESPACE, name)
        assert live is not None
        self.kube.put({**live, "status": {**live.get("status", {}), **status}})

    def _run(self, rayjob: dict[str, Any]) -> None:
        name = rayjob["metadata"]["name"]
        args = shlex.split(rayjob["spec"]["entrypoint"])
        self.entrypoints.append(args)
        failing, self.fail = self.fail > 0, self.fail - 1
        self._status(name, jobDeploymentStatus="Initializing")
        for key in [k for k in self.kube.objects if k[1] == "pods"]:  # a deleted job's pods went with it
            self.kube.objects.pop(key)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{len(self.entrypoints)}x7k2",
                "namespace": NAMESPACE,
                "labels": {"job-name": name},
            },
            "spec": {"containers": [{"name": "ray-job-submitter"}]},
            "status": {"phase": "Pending"},
        }
        self.kube.put(pod)
        time.sleep(0.1)  # the step polls while the pod waits to start (its log answers 400)
        self.kube.put({**pod, "status": {"phase": "Running"}})
        self._status(name, jobDeploymentStatus="Running", jobStatus="RUNNING")
        pod_name = pod["metadata"]["name"]
        # two lines in one second, read apart: the second read (sinceTime 00:00:01) returns both, and
        # only the first is old — ".1" is before ".12" in time, though not as text
        self.kube.log(
            NAMESPACE, pod_name, "Job submission server address: http://head:8265", at=_stamp(1, ".1")
        )
        time.sleep(0.2)
        self.kube.log(NAMESPACE, pod_name, "INFO stage action on 4 Ray Train workers", at=_stamp(1, ".12"))
        time.sleep(0.2)
        if failing:
            self.kube.log(NAMESPACE, pod_name, "RuntimeError: rank 3 ran out of memory", at=_stamp(2))
            self.kube.put({**pod, "status": {"phase": "Failed"}})
            message = "Job entrypoint command failed with exit code 1, last available logs: RuntimeError"
            self._status(
                name, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message=message
            )
            return
        self._write_outputs(args)
        self.kube.log(NAMESPACE, pod_name, "stage action: step 4 (4 this run)", at=_stamp(3))
        self.kube.put({**pod, "status": {"phase": "Succeeded"}})
        self._status(name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")

    def _write_outputs(self, args: list[str]) -> None:
        """The job's outputs: a checkpoint mirrored to ``--out`` and the summary at ``--result``."""
        out, result = args[args.index("--out") + 1], args[args.index("--result") + 1]
        folder = self.settings.home / "job-node" / "step-00000004"
        folder.mkdir(parents=True)
        save_file({"w": torch.ones(2)}, str(folder / "model.safetensors"))
        (folder / "state.json").write_text(json.dumps({"step": 4, "world_size": 4}))
        CheckpointMirror(out, settings=self.settings).push(folder)
        summary = RayStageRun(
            steps=4,
            losses=[0.5, 0.25],
            seconds=1.0,
            checkpoint=str(folder),
            mlflow_run_id="run-7",
            world_size=4,
            nodes=["a", "a", "b", "b"],
        )
        storage.write_bytes(result, summary.model_dump_json().encode(), settings=self.settings)


@pytest.fixture
def cluster(
    tmp_path: Path, s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeKube, FakeKubeRay]]:
    kube = FakeKube()
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    settings = s3_settings.model_copy(update={"home": tmp_path / "home"})
    operator = FakeKubeRay(kube, settings)
    kube.on_create["RayJob"] = operator
    server, url = kube.serve()
    # the step's pod: its service account's API access (a kubeconfig here) and the platform settings
    kubeconfig = write_user_kubeconfig(tmp_path / "kubeconfig", url, kube.token)
    monkeypatch.setenv("WORLDLOOP_KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("WORLDLOOP_HOME", str(settings.home))
    monkeypatch.setenv("WORLDLOOP_S3_ENDPOINT_URL", str(settings.s3_endpoint_url))
    monkeypatch.setenv("WORLDLOOP_S3_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("WORLDLOOP_S3_SECRET_ACCESS_KEY", "test")
    get_settings.cache_clear()
    try:
        yield kube, operator
    finally:
        get_settings.cache_clear()
        server.shutdown()
        server.server_close()


def _mixture(folder: Path) -> Path:
    """The mixing step's output as a training step on a cluster gets it: a ``mixture.json`` naming the
    datasets by the KFP mounts (``/minio/…``, ``/s3/…``) of their artifacts."""
    folder.mkdir(parents=True)
    sources = [
        {"uri": f"/minio/{S3_BUCKET}/kfp/curate/curated", "weight": 0.5},
        {"uri": f"/s3/{S3_BUCKET}/kfp/synth/dataset", "weight": 0.5},
    ]
    (folder / "mixture.json").write_text(json.dumps({"format": "worldloop-mixture/1", "sources": sources}))
    return folder


def test_remote_uri() -> None:
    assert remote_uri("/minio/mlpipeline/v2/artifacts/x") == "s3://mlpipeline/v2/artifacts/x"
    assert remote_uri("/s3/worldloop/kfp/x") == "s3://worldloop/kfp/x"
    assert remote_uri("s3://worldloop/data") == "s3://worldloop/data"
    assert remote_uri("/data/datasets/a") == "/data/datasets/a"  # the PVC, mounted in every pod
    with pytest.raises(ValueError, match="GCS artifact"):
        remote_uri("/gcs/bucket/x")


def test_step_trains_as_a_rayjob_and_a_retry_resubmits(
    tmp_path: Path, cluster: tuple[FakeKube, FakeKubeRay], caplog: pytest.LogCaptureFixture
) -> None:
    kube, operator = cluster
    config = ClusterConfig(
        gpu_count=2, train_job=TrainJobConfig(workers=2, output_root=f"s3://{S3_BUCKET}/jobs", poll_s=0.05)
    )
    template = training_job(config)
    assert template is not None
    data = Dataset(name="data", uri=str(_mixture(tmp_path / "mix")), metadata={})
    init = Model(name="init", uri=f"minio://{S3_BUCKET}/kfp/train-vae/checkpoint", metadata={})

    def step(out: Path) -> Model:
        checkpoint = Model(name="checkpoint", uri=str(out), metadata={})
        train_stage.python_func(
            stage="action",
            preset="tiny",
            max_steps=0,
            steps_scale=1.0,
            parent_run_id="parent-1",
            data=data,
            checkpoint=checkpoint,
            init=init,
            train_job=template.model_dump_json(),
        )
        return checkpoint

    with caplog.at_level(logging.INFO), pytest.raises(RayJobFailed) as failed:
        step(tmp_path / "try-1")
    # the job's message, and the last lines of its log
    assert "ended Failed/FAILED, AppFailed: Job entrypoint command failed with exit code 1" in str(
        failed.value
    )
    assert "RuntimeError: rank 3 ran out of memory" in str(failed.value)

    with caplog.at_level(logging.INFO):
        checkpoint = step(tmp_path / "try-2")  # the pipeline's retry of the step
    first, second = operator.entrypoints
    assert first == second  # the same job: same name, same folder (it resumes from the checkpoints there)
    posts = [r for r in kube.requests if r.method == "POST" and r.path == RAYJOBS]
    assert [r.body["metadata"]["name"] for r in posts] == [posts[0].body["metadata"]["name"]] * 3
    name = posts[0].body["metadata"]["name"]
    assert name.startswith("wl-action-")
    # created, then on the retry: 409, the failed job deleted, created again
    deletes = [r for r in kube.requests if r.method == "DELETE"]
    assert [r.path for r in deletes] == [f"{RAYJOBS}/{name}"]
    assert deletes[0].query["propagationPolicy"] == ["Foreground"]

    # the entrypoint: the template's Ray Train part, then the stage; data and init as S3 URIs
    assert second[: len(shlex.split(template.manifest["spec"]["entrypoint"]))] == shlex.split(
        template.manifest["spec"]["entrypoint"]
    )
    assert "--workers" in second and second[second.index("--workers") + 1] == "4"
    data_args = [second[i + 1] for i, a in enumerate(second) if a == "--data"]
    assert data_args == [
        f"s3://{S3_BUCKET}/kfp/curate/curated=0.5",
        f"s3://{S3_BUCKET}/kfp/synth/dataset=0.5",
    ]
    assert second[second.index("--init") + 1] == f"s3://{S3_BUCKET}/kfp/train-vae/checkpoint"
    assert second[second.index("--parent-run-id") + 1] == "parent-1"
    folder = f"s3://{S3_BUCKET}/jobs/{name}"
    assert second[second.index("--out") + 1] == f"{folder}/checkpoints"
    expected = step_config("action", preset="tiny", steps_scale=1.0, max_steps=0, clip_frames=0)
    settings = get_settings()
    assert storage.read_bytes(f"{folder}/config.yaml", settings=settings).decode() == dump_yaml(expected)

    # the job's log went into the step's, each line once, in order
    job_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"[{name}] ")]
    assert job_lines == [
        f"[{name}] Job submission server address: http://head:8265",
        f"[{name}] INFO stage action on 4 Ray Train workers",
        f"[{name}] RuntimeError: rank 3 ran out of memory",
        f"[{name}] Job submission server address: http://head:8265",
        f"[{name}] INFO stage action on 4 Ray Train workers",
        f"[{name}] stage action: step 4 (4 this run)",
    ]
    # the final checkpoint is the step's output artifact; the summary its metadata
    out = tmp_path / "try-2"
    assert (out / "latest").read_text().strip() == "step-00000004"
    assert (out / "step-00000004" / "model.safetensors").is_file()
    assert checkpoint.metadata == {
        "stage": "action",
        "preset": "tiny",
        "steps": 4,
        "mlflow_run_id": "run-7",
        "final_loss": 0.25,
    }
