"""One training stage on a Ray cluster: :func:`~.run.run_stage` on N Ray Train workers (TorchTrainer).

The same code path as ``torchrun``: every worker is one rank running ``run_stage``, and Ray Train's
torch backend does what torchrun does — it forms the process group (gloo on CPU, NCCL on GPU, rank 0's
node address as ``MASTER_ADDR``) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR/PORT`` in each worker before the training function runs. The training loop's
:func:`~worldloop.model.train.engine.ensure_distributed` then finds the group formed and lets
DeepSpeed wrap it instead of creating a second one. So N workers with batch B follow one process with
batch N·B (``tests/components/training/test_ray_cluster_training.py``), as N torchrun processes do.

Rank 0 writes the checkpoints and reports to MLflow; an ``s3://`` output is mirrored
(:class:`~worldloop.platform.checkpoints.CheckpointMirror`): each checkpoint is uploaded as it is
written — under ZeRO ≥ 1 every rank uploads its own optimizer shard, so workers on different pods
need no shared folder — and every rank pulls the latest before it starts, so a re-submitted job (a
retried pipeline step, a restarted worker group) resumes where the last one stopped. A local output
must be a folder every worker reaches.

Where the job runs: ``address`` (``ray://…``, ``host:port`` or ``auto``), else the cluster of the Ray
job this driver runs in (``RAY_ADDRESS``, what a KubeRay RayJob's entrypoint gets), else a local Ray
started here. Workers read the platform settings from their own environment (a RayJob's pods get the
``worldloop-settings`` ConfigMap and the S3 Secret).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worldloop import storage
from worldloop.data import DataSource, parse_source
from worldloop.model.train.config import TrainConfig

log = logging.getLogger(__name__)

Placement = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


class RayWorkers(BaseModel):
    """The Ray Train worker group of one stage: one worker is one rank."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_workers: int = Field(2, ge=1, description="Ranks: one per GPU (use_gpu), else one per CPU worker.")
    use_gpu: bool = Field(False, description="One GPU per worker and NCCL; else CPU workers and gloo.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker.")
    placement: Placement = Field(
        "PACK", description="Ray placement strategy of the workers (STRICT_SPREAD: one per node)."
    )
    max_failures: int = Field(
        0, ge=0, description="Restarts of a failed worker group; each resumes from the last checkpoint."
    )


class RayStageRun(BaseModel):
    """What a stage trained on Ray reports (rank 0's view, plus the node of every rank)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int
    losses: list[float]
    seconds: float
    checkpoint: str | None = Field(description="Rank 0's last checkpoint folder (local to its node).")
    mlflow_run_id: str | None
    world_size: int
    nodes: list[str] = Field(description="Ray node id of each rank, in rank order.")


def _worker(config: dict[str, Any]) -> None:
    """The body of every Ray Train worker: this rank's ``run_stage``; rank 0 hands back the summary."""
    import ray
    import torch.distributed as dist

    from worldloop.components.training.run import run_stage

    if not logging.getLogger().handlers:  # the worker's records go to the driver's log (and the job's)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = run_stage(
        TrainConfig.model_validate_json(config["cfg"]),
        data=[DataSource.model_validate(s) for s in config["data"]] if config["data"] else None,
        out=config["out"],
        init=config["init"],
        max_steps=config["max_steps"],
        track=config["track"],
        parent_run_id=config["parent_run_id"],
    )
    rank, world = dist.get_rank(), dist.get_world_size()
    nodes: list[Any] = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if rank == 0:
        result = run.result
        summary = RayStageRun(
            steps=result.steps,
            losses=result.losses,
            seconds=result.seconds,
            checkpoint=str(result.checkpoint) if result.checkpoint else None,
            mlflow_run_id=run.mlflow_run_id,
            world_size=world,
            nodes=[str(n) for n in nodes],
        )
        ray.get(config["results"].put.remote(summary.model_dump_json()))


def train_on_ray(
    cfg: TrainConfig,
    *,
    workers: RayWorkers,
    out: str,
    data: Sequence[str | DataSource] | None = None,
    init: str | None = None,
    max_steps: int | None = None,
    track: bool = True,
    parent_run_id: str | None = None,
    address: str | None = None,
) -> RayStageRun:
    """Train stage ``cfg.stage`` on ``workers.num_workers`` Ray Train workers into ``out`` (a folder
    every worker reaches, or ``s3://``), initialised from ``init``, resuming from ``out``; the arguments
    are :func:`~.run.run_stage`'s. Raises RuntimeError with the workers' errors when training fails."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)

    @ray.remote(num_cpus=0)
    class _Results:  # rank 0's summary, handed to this driver (Ray Train v2 keeps no return values)
        def __init__(self) -> None:
            self.value: str | None = None

        def put(self, value: str) -> None:
            self.value = value

        def get(self) -> str | None:
            return self.value

    results = _Results.remote()  # type: ignore[attr-defined]
    sources = [s if isinstance(s, DataSource) else parse_source(s) for s in data or []]
    config = {  # what every worker gets (pickled): plain values, the config as JSON
        "cfg": cfg.model_dump_json(),
        "data": [s.model_copy(update={"uri": _absolute(s.uri)}).model_dump() for s in sources],
        "out": _absolute(out),
        "init": _absolute(init) if init else None,
        "max_steps": max_steps,
        "track": track,
        "parent_run_id": parent_run_id,
        "results": results,
    }
    resources = {"CPU": workers.cpus_per_worker, **({"GPU": 1.0} if workers.use_gpu else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers.num_workers,
            use_gpu=workers.use_gpu,
            resources_per_worker=resources,
            placement_strategy=workers.placement,
        ),
        torch_config=TorchConfig(backend="nccl" if workers.use_gpu else "gloo"),
        run_config=RunConfig(
            name=f"worldloop-{cfg.stage.value}",
            failure_config=FailureConfig(max_failures=workers.max_failures),
        ),
    )
    log.info(
        "stage %s on %d Ray Train workers (%s, %s placement) into %s",
        cfg.stage.value,
        workers.num_workers,
        "GPU" if workers.use_gpu else "CPU",
        workers.placement,
        out,
    )
    try:
        trainer.fit()
    except TrainingFailedError as err:
        raise RuntimeError(f"stage {cfg.stage.value} failed on Ray Train: {err}") from err
    summary = ray.get(results.get.remote())
    if summary is None:
        raise RuntimeError(f"stage {cfg.stage.value}: Ray Train finished but rank 0 reported nothing")
    return RayStageRun.model_validate_json(summary)


def _absolute(uri: str) -> str:
    """A local path made absolute here: workers run in Ray's session folders, not this directory."""
    if storage.scheme_of(uri) is storage.Scheme.local:
        return str(storage.as_local_path(uri).resolve())
    return uri
