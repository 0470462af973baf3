"""MLflow tracking for a training stage: one run per stage (a child when a pipeline run is given),
config as params, metrics per step, a loss-curve PNG and the checkpoint URI at the end."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:500]


class StageTracker:
    """Context manager around one MLflow run; ``log_metrics`` is the trainer's ``on_metrics``."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        parent_run_id: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.params, self.parent_run_id = params, parent_run_id
        self.artifact_location = artifact_location
        self.run_id: str | None = None
        self.history: list[tuple[int, float]] = []

    def __enter__(self) -> StageTracker:
        mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.get_experiment_by_name(self.experiment) is None:
            # Local profile: artifacts beside the sqlite store, not in ./mlruns of whatever cwd.
            mlflow.create_experiment(self.experiment, artifact_location=self.artifact_location)
        mlflow.set_experiment(self.experiment)
        tags = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {}
        # CPU / memory (and GPU where present) sampled by MLflow alongside the training metrics.
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
        run = mlflow.start_run(run_name=self.run_name, tags=tags, log_system_metrics=True)
        self.run_id = run.info.run_id
        flat: dict[str, str] = {}
        _flatten("", self.params, flat)
        mlflow.log_params(flat)
        return self

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()}, step=step)
        if "loss" in metrics:
            self.history.append((step, metrics["loss"]))

    def log_file(self, path: str | Path) -> None:
        mlflow.log_artifact(str(path))

    def finish(self, *, losses: list[float], first_step: int, checkpoint: str | None) -> None:
        """Loss curve PNG (every step of this run) and the checkpoint location."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with tempfile.TemporaryDirectory() as tmp:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            steps = list(range(first_step + 1, first_step + 1 + len(losses)))
            ax.plot(steps, losses, lw=1)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.set_title(self.run_name)
            ax.grid(alpha=0.3)
            path = Path(tmp) / "loss_curve.png"
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
            mlflow.log_artifact(str(path))
        if checkpoint:
            mlflow.set_tag("checkpoint_uri", checkpoint)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        mlflow.end_run(status="FAILED" if exc_type else "FINISHED")
