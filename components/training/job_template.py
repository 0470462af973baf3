"""The training-job template a pipeline hands its training steps (``ClusterConfig.train_job``): light
(pydantic only), so compiling a pipeline imports neither torch nor Ray."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

APP_LABEL = "app.kubernetes.io/name"
TRAIN_APP = "worldloop-train"  # the job's pods: NetworkPolicy allow-ray-training selects them
STAGE_LABEL = "worldloop.io/stage"


class RayJobTemplate(BaseModel):
    """What a training step needs to train as a KubeRay RayJob; built when the pipeline is compiled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: dict[str, Any] = Field(
        description="The RayJob (ray.io/v1), complete but for metadata.name and the stage's arguments, "
        "which the step appends to spec.entrypoint."
    )
    output_root: str = Field(description="Each job's folder goes here (s3://): config, checkpoints, summary.")
    poll_s: float = Field(10.0, gt=0, description="How often the step reads the job's status and log.")
