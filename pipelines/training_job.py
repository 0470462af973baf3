"""The RayJob a training step submits (``ClusterConfig.train_job``), built from the cluster config when
the pipeline is compiled, so the compiled IR shows it.

One KubeRay RayJob per stage: a Ray cluster of a CPU head (it runs the driver, ``worldloop train``,
and no rank: ``num-cpus`` 0) and ``workers`` worker pods of ``gpu_count`` GPUs, ``train_cpu`` and
``train_memory`` each, on the GPU nodes; Ray Train places one rank per GPU (one per pod on CPU) and
forms the process group (:mod:`worldloop.components.training.ray_train`). Every pod gets the
settings ConfigMap and the secrets as environment, the shared PVC, a memory-backed ``/dev/shm`` and
the ``worldloop-train`` label that NetworkPolicy ``allow-ray-training`` opens Ray's ports between.
Ray's token authentication is on (KubeRay keeps the token in a Secret of its own). The cluster is
deleted when the job ends (``shutdownAfterJobFinishes``) and the RayJob ``ttl_s`` later; the job does
not retry itself (``backoffLimit`` 0): the pipeline retries the step, whose new job resumes from the
checkpoints. The step fills in the name and the stage's arguments (:func:`~worldloop.components.
training.cluster_job.job_manifest`).
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from worldloop.components.training.job_template import APP_LABEL, TRAIN_APP, RayJobTemplate
from worldloop.pipelines.cluster import ClusterConfig, TrainJobConfig

SETTINGS_CONFIGMAP = "worldloop-settings"  # infra/k8s/base/settings.yaml
SHM = "shm"
DATA = "data"
_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100}
_SUBMITTER_RESOURCES = {"cpu": "500m", "memory": "1Gi"}


def ranks_per_pod(cfg: ClusterConfig) -> int:
    """One rank per GPU of a worker pod; one per pod when the pods have no GPU."""
    return max(1, cfg.gpu_count)


def _cpus(quantity: str) -> int:
    """Whole CPUs of a Kubernetes CPU quantity ("8", "7.5", "500m"), at least 1: Ray's ``num-cpus``."""
    value = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return max(1, math.floor(value))


def entrypoint(cfg: ClusterConfig) -> str:
    """``worldloop train`` with the job's Ray Train workers; the step appends the stage's arguments."""
    job = _job(cfg)
    per_pod = ranks_per_pod(cfg)
    args = ["worldloop", "train", "--ray-address", "auto", "--workers", str(job.workers * per_pod)]
    args += ["--gpu"] if cfg.gpu_count else []
    args += ["--cpus-per-worker", f"{_cpus(cfg.train_cpu) / per_pod:g}", "--placement", "PACK"]
    args += ["--max-failures", str(job.max_failures)]
    return shlex.join(args)


def _job(cfg: ClusterConfig) -> TrainJobConfig:
    if cfg.train_job is None:
        raise ValueError("the cluster config has no train_job: training steps train in their own pods")
    return cfg.train_job


def _env(cfg: ClusterConfig) -> list[dict[str, Any]]:
    return [
        {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}}
        for secret in cfg.secrets
        for key, variable in sorted(secret.env.items())
    ]


def _container(cfg: ClusterConfig, *, name: str, resources: dict[str, Any]) -> dict[str, Any]:
    mounts = [{"name": SHM, "mountPath": "/dev/shm"}]
    if cfg.pvc is not None:
        mounts.append({"name": DATA, "mountPath": cfg.pvc_mount})
    return {
        "name": name,
        "image": cfg.image,
        "envFrom": [{"configMapRef": {"name": SETTINGS_CONFIGMAP}}],
        "env": _env(cfg),
        "resources": resources,
        "securityContext": _SECURITY,
        "volumeMounts": mounts,
    }


def _pod(cfg: ClusterConfig, container: dict[str, Any], *, gpu: bool) -> dict[str, Any]:
    job = _job(cfg)
    volumes: list[dict[str, Any]] = [
        {"name": SHM, "emptyDir": {"medium": "Memory", "sizeLimit": job.shm_size}}
    ]
    if cfg.pvc is not None:
        volumes.append({"name": DATA, "persistentVolumeClaim": {"claimName": cfg.pvc}})
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the job's pods call no Kubernetes API
        "securityContext": _POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
    }
    if gpu:
        spec["nodeSelector"] = dict(sorted(cfg.gpu_node_selector.items()))
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in cfg.gpu_tolerations]
    return {"metadata": {"labels": {APP_LABEL: TRAIN_APP}}, "spec": spec}


def _limits(cpu: str, memory: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    amounts = {"cpu": cpu, "memory": memory, **(extra or {})}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def rayjob_manifest(cfg: ClusterConfig) -> dict[str, Any]:
    """The training RayJob of ``cfg`` (``metadata.name`` and the stage's arguments still to add)."""
    job = _job(cfg)
    gpus = {cfg.gpu_type: str(cfg.gpu_count)} if cfg.gpu_count else {}
    head = _container(cfg, name="ray-head", resources=_limits(job.head_cpu, job.head_memory))
    head["ports"] = [
        {"name": "gcs", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
    ]
    worker = _container(cfg, name="ray-worker", resources=_limits(cfg.train_cpu, cfg.train_memory, gpus))
    spec: dict[str, Any] = {
        "entrypoint": entrypoint(cfg),
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": job.ttl_s,
        "backoffLimit": 0,
        "rayClusterSpec": {
            "rayVersion": job.ray_version,
            "authOptions": {"mode": "token"},
            "headGroupSpec": {
                # no rank on the head: it runs the driver and Ray Train's controller (0 CPUs each)
                "rayStartParams": {"num-cpus": "0", "num-gpus": "0", "dashboard-host": "0.0.0.0"},
                "template": _pod(cfg, head, gpu=False),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "train",
                    "replicas": job.workers,
                    "minReplicas": job.workers,
                    "maxReplicas": job.workers,
                    # explicit: KubeRay counts only GPU resources it knows (not MIG slices)
                    "rayStartParams": {"num-cpus": str(_cpus(cfg.train_cpu)), "num-gpus": str(cfg.gpu_count)},
                    "template": _pod(cfg, worker, gpu=bool(cfg.gpu_count)),
                }
            ],
        },
        "submitterPodTemplate": {
            "metadata": {"labels": {APP_LABEL: TRAIN_APP}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": _POD_SECURITY,
                "containers": [
                    {
                        "name": "ray-job-submitter",  # KubeRay sets its command: ray job submit …
                        "image": cfg.image,
                        "resources": _limits(_SUBMITTER_RESOURCES["cpu"], _SUBMITTER_RESOURCES["memory"]),
                        "securityContext": _SECURITY,
                    }
                ],
            },
        },
    }
    if job.active_deadline_s is not None:
        spec["activeDeadlineSeconds"] = job.active_deadline_s
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "namespace": job.namespace,
            "labels": {APP_LABEL: TRAIN_APP, "app.kubernetes.io/part-of": "worldloop"},
        },
        "spec": spec,
    }


def training_job(cfg: ClusterConfig) -> RayJobTemplate | None:
    """What each training step gets: the RayJob template, or None (``train_job`` unset: no job)."""
    if cfg.train_job is None:
        return None
    return RayJobTemplate(
        manifest=rayjob_manifest(cfg), output_root=cfg.train_job.output_root, poll_s=cfg.train_job.poll_s
    )
