"""Distributed training from the pipeline (``ClusterConfig.train_job``): the compiled ``full`` pipeline
carries the RayJob submission of every training stage, the training steps themselves run on small CPU
pods, and the RayJob each step creates validates offline against the vendored KubeRay CRD schema and
the project's manifest rules, as the infra manifests do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from worldloop.cli.train import STAGES
from worldloop.components.training.cluster_job import COMMAND_STAGES, job_manifest
from worldloop.components.training.job_template import APP_LABEL, TRAIN_APP, RayJobTemplate
from worldloop.k8s.render import render
from worldloop.k8s.validate import validate_objects
from worldloop.model.train.config import Stage
from worldloop.pipelines.catalog import compile_pipeline
from worldloop.pipelines.cluster import ClusterConfig, TrainJobConfig, load_cluster_config
from worldloop.pipelines.training_job import training_job

TRAINING = [f"train-stage{s}" for s in ("", "-2", "-3", "-4", "-5")]
ARGS = ["--stage", "action", "--config", "s3://worldloop/training-jobs/j/config.yaml", "--out", "s3://b/o"]


def _compiled(tmp_path: Path, cluster: ClusterConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, platform = yaml.safe_load_all(
        compile_pipeline("full", tmp_path / "full.yaml", cluster=cluster).read_text()
    )
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _template(task: dict[str, Any]) -> str:
    return str(task["inputs"]["parameters"]["train_job"]["runtimeValue"]["constant"])


def test_every_training_stage_submits_the_rayjob(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("gpu_count: 4\ntrain_cpu: '32'\ntrain_job:\n  workers: 2\n  active_deadline_s: 86400\n")
    cluster = load_cluster_config(path)
    spec, kube = _compiled(tmp_path, cluster)
    tasks = spec["root"]["dag"]["tasks"]
    stages = set()
    for name in TRAINING:
        template = RayJobTemplate.model_validate_json(_template(tasks[name]))
        assert template == training_job(cluster)
        rayjob = template.manifest
        stages.add(tasks[name]["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"])
        assert (rayjob["apiVersion"], rayjob["kind"], rayjob["metadata"]["namespace"]) == (
            "ray.io/v1",
            "RayJob",
            "worldloop",
        )
        # 2 pods × 4 GPUs: 8 ranks of 8 CPUs each, launched by the same command a user runs
        assert rayjob["spec"]["entrypoint"] == (
            "worldloop train --ray-address auto --workers 8 --gpu --cpus-per-worker 8 --placement PACK "
            "--max-failures 0"
        )
        (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
        pod = group["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert group["rayStartParams"] == {"num-cpus": "32", "num-gpus": "4"}
        assert rayjob["spec"]["activeDeadlineSeconds"] == 86400 and rayjob["spec"]["backoffLimit"] == 0
        assert template.output_root.startswith("s3://")
        # the step only submits and waits: a small CPU pod, no GPU, no GPU node
        executor = f"exec-{name}"
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert "accelerator" not in container.get("resources", {})
        assert container["resources"]["resourceCpuLimit"] == "1"
        assert "nodeSelector" not in kube[executor] and "tolerations" not in kube[executor]
        assert kube[executor]["secretAsEnv"][0]["secretName"] == "worldloop-s3"
    assert stages == {"vae", "action", "instruction", "distill", "long"}


def test_without_train_job_the_steps_train_in_their_pods(tmp_path: Path) -> None:
    spec, kube = _compiled(tmp_path, ClusterConfig())
    tasks = spec["root"]["dag"]["tasks"]
    for name in TRAINING:
        assert _template(tasks[name]) == ""
        assert "accelerator" in spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]["resources"]


@pytest.mark.parametrize(
    "cluster",
    [
        ClusterConfig(train_job=TrainJobConfig()),
        ClusterConfig(gpu_count=8, gpu_type="nvidia.com/mig-1g.10gb", train_job=TrainJobConfig(workers=4)),
        ClusterConfig(gpu_count=0, pvc=None, train_job=TrainJobConfig(workers=3, active_deadline_s=600)),
    ],
    ids=["default", "mig", "cpu"],
)
def test_rendered_rayjob_validates_against_the_crd(cluster: ClusterConfig) -> None:
    template = training_job(cluster)
    assert template is not None
    rayjob = job_manifest(template, name="wl-action-0123456789", stage=Stage.action, args=ARGS)
    assert validate_objects([rayjob], file="rayjob") == []
    assert rayjob["metadata"]["labels"]["worldloop.io/stage"] == "action"
    assert rayjob["spec"]["entrypoint"].endswith(" ".join(ARGS))
    assert template.manifest["spec"]["entrypoint"] + " " in rayjob["spec"]["entrypoint"]
    env = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["name"] for e in env} == {"WORLDLOOP_S3_ACCESS_KEY_ID", "WORLDLOOP_S3_SECRET_ACCESS_KEY"}
    assert all("secretKeyRef" in e["valueFrom"] for e in env)  # secrets by reference only
    # the validator sees through it: a typo'd field and a container without limits are reported
    broken = json.loads(json.dumps(rayjob))
    broken["spec"]["shutdownAfterJobFinish"] = True
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"
    ]
    fields = {p.field for p in validate_objects([broken])}
    assert "spec.shutdownAfterJobFinish" in fields
    assert any(
        f.startswith("spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].resources")
        for f in fields
    )


def test_network_policy_opens_the_training_pods_to_each_other() -> None:
    (policy,) = [o for o in render("dev") if o["metadata"]["name"] == "allow-ray-training"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {APP_LABEL: TRAIN_APP}}
    assert policy["spec"]["ingress"][0] == {
        "from": [{"podSelector": {"matchLabels": {APP_LABEL: TRAIN_APP}}}]
    }


def test_stage_names_of_the_entrypoint_are_the_cli_names() -> None:
    assert {v: k for k, v in COMMAND_STAGES.items()} == {k: Stage(v) for k, v in STAGES.items()}
