"""Cluster settings of the pipelines, applied in one place (``kfp.kubernetes``).

The compiled IR carries them; ``kfp.local`` ignores them (it only warns about a few). Every task gets
the project image, retries, the shared PVC and the secrets; the training tasks also get GPUs, the GPU
node selector and the GPU toleration — or, with ``train_job`` set, each training task submits a
KubeRay RayJob of ``train_job.workers`` pods × ``gpu_count`` GPUs (:mod:`.training_job`) and waits
for it, itself on a small CPU pod. Load from YAML with :func:`load_cluster_config`
(``WORLDLOOP_PIPELINE_CLUSTER_CONFIG``); the defaults fit the manifests of DESIGN.md §10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from kfp import kubernetes
from kfp.dsl import PipelineTask
from pydantic import BaseModel, ConfigDict, Field

from worldloop.components.base_image import IMAGE


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="Taint key tolerated.")
    operator: Literal["Equal", "Exists"] = Field("Exists", description="Equal needs a value.")
    value: str | None = Field(None, description="Taint value (operator Equal).")
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = Field(
        "NoSchedule", description="Taint effect tolerated (None: all)."
    )


class SecretEnv(BaseModel):
    """A Kubernetes secret whose keys become environment variables of every task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Secret name in the pipeline's namespace.")
    env: dict[str, str] = Field(description="Secret key → environment variable.")


class TrainJobConfig(BaseModel):
    """Distributed training: each training task runs its stage as a KubeRay RayJob (Ray Train's
    TorchTrainer over the worker pods, one rank per GPU) instead of in its own pod."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(
        2, ge=1, description="Worker pods, each with gpu_count GPUs, train_cpu, train_memory."
    )
    namespace: str = Field(
        "worldloop", description="Namespace of the jobs (the pipeline-runner Role there may create them)."
    )
    output_root: str = Field(
        "s3://worldloop/training-jobs",
        description="Where each job keeps its config, checkpoints and summary (a retried step resumes).",
    )
    head_cpu: str = Field("2", description="CPU of the Ray head pod (it runs the driver, no rank).")
    head_memory: str = Field("8G", description="Memory of the Ray head pod.")
    step_cpu: str = Field("1", description="CPU of the pipeline step that submits the job and waits.")
    step_memory: str = Field(
        "4G", description="Memory of that step (it also downloads the final checkpoint)."
    )
    shm_size: str = Field("8Gi", description="/dev/shm of each Ray pod (object store, NCCL).")
    max_failures: int = Field(
        0,
        ge=0,
        description="Restarts of a failed Ray Train worker group; each resumes from the last checkpoint.",
    )
    active_deadline_s: int | None = Field(
        None, ge=1, description="The job fails after this many seconds (RayJob activeDeadlineSeconds)."
    )
    ttl_s: int = Field(
        600, ge=0, description="Seconds a finished RayJob is kept (its Ray cluster goes at once)."
    )
    poll_s: float = Field(10.0, gt=0, description="How often the step polls the job's status and logs.")
    ray_version: str = Field("2.60.0", description="Ray in the image (KubeRay's rayVersion).")


class ClusterConfig(BaseModel):
    """How pipeline tasks run on Kubernetes. No secret values here: only secret *names*."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(IMAGE, description="Component image (infra/docker/Dockerfile.component).")
    gpu_type: str = Field("nvidia.com/gpu", description="Accelerator resource of the training tasks.")
    gpu_count: int = Field(1, ge=0, description="GPUs per training task (0: CPU training).")
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="Node labels the training tasks are scheduled on.",
    )
    gpu_tolerations: tuple[Toleration, ...] = Field(
        (Toleration(key="nvidia.com/gpu"),), description="Tolerations of the training tasks."
    )
    train_cpu: str = Field("8", description="CPU limit of a training task.")
    train_memory: str = Field("64G", description="Memory limit of a training task.")
    pvc: str | None = Field("worldloop-data", description="PVC mounted in every task (None: none).")
    pvc_mount: str = Field("/data", description="Where the PVC is mounted.")
    secrets: tuple[SecretEnv, ...] = Field(
        (
            SecretEnv(
                name="worldloop-s3",
                env={
                    "access_key_id": "WORLDLOOP_S3_ACCESS_KEY_ID",
                    "secret_access_key": "WORLDLOOP_S3_SECRET_ACCESS_KEY",
                },
            ),
        ),
        description="Secrets exposed as environment variables to every task.",
    )
    retries: int = Field(2, ge=0, description="Retries of a failed task.")
    train_job: TrainJobConfig | None = Field(
        None, description="Train each stage as a KubeRay RayJob on several pods (None: in the task's pod)."
    )


def load_cluster_config(path: Path | None) -> ClusterConfig:
    """The config in the YAML file ``path``, or the defaults."""
    if path is None:
        return ClusterConfig()
    if not path.is_file():
        raise FileNotFoundError(f"cluster config {path}: no such file")
    return ClusterConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def apply_common(task: PipelineTask, cfg: ClusterConfig) -> PipelineTask:
    """Image, retries, PVC and secrets: every task."""
    task.set_container_image(cfg.image)
    if cfg.retries:
        task.set_retry(num_retries=cfg.retries, backoff_duration="30s")
    if cfg.pvc is not None:
        kubernetes.mount_pvc(task, pvc_name=cfg.pvc, mount_path=cfg.pvc_mount)
    for secret in cfg.secrets:
        kubernetes.use_secret_as_env(task, secret_name=secret.name, secret_key_to_env=dict(secret.env))
    return task


def apply_training(task: PipelineTask, cfg: ClusterConfig) -> PipelineTask:
    """:func:`apply_common` plus GPUs, GPU node selector and tolerations: the training tasks. With
    ``train_job`` the GPUs are the RayJob's: the task itself only submits it and waits, on a CPU pod."""
    apply_common(task, cfg)
    if cfg.train_job is not None:
        return task.set_cpu_limit(cfg.train_job.step_cpu).set_memory_limit(cfg.train_job.step_memory)
    task.set_cpu_limit(cfg.train_cpu).set_memory_limit(cfg.train_memory)
    if cfg.gpu_count:
        task.set_accelerator_type(cfg.gpu_type).set_accelerator_limit(cfg.gpu_count)
        for key, value in sorted(cfg.gpu_node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in cfg.gpu_tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    return task
