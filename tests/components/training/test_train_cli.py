"""``worldloop train`` as users run it: MLflow run with metrics and a loss curve; kill -9 then the same
command resumes and ends with the parameters of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file

from worldloop.components.synthworld import SynthConfig, write_dataset
from worldloop.config_io import save_yaml
from worldloop.model.train.config import CurriculumPhase, LongExtensionConfig, stage_preset
from worldloop.video import decode_video


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from worldloop.cli.main import main; main()", *args]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    write_dataset(root / "data", SynthConfig(size=64, frames=17), clips=2, seed=5)
    cfg = stage_preset("action").model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=9, steps=3), CurriculumPhase(frames=13, steps=3)),
            "height": 32,
            "width": 32,
            "checkpoint_every": 1,
            "log_every": 1,
        }
    )
    save_yaml(cfg, root / "action.yaml")
    return root, root / "action.yaml"


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "WORLDLOOP_HOME": str(home)}


def test_train_tracks_in_mlflow(setup: tuple[Path, Path]) -> None:
    root, config = setup
    home = root / "home-a"
    args = ("train", "--stage", "action", "--data", str(root / "data"), "--out", str(root / "a"))
    done = subprocess.run(
        _cli(*args, "--config", str(config)), capture_output=True, text=True, timeout=600, env=_env(home)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage action: step 6" in done.stdout
    client = mlflow.tracking.MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("worldloop-training")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert run.data.params["config.stage"] == "action"
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    assert run.data.tags["checkpoint_uri"].endswith("step-00000006")
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "loss_curve.png" in artifacts and "sample_action.mp4" in artifacts
    video = Path(client.download_artifacts(run.info.run_id, "sample_action.mp4", str(root)))
    frames, _ = decode_video(video)
    assert frames.shape == (1 + 4 * 8, 32, 32, 3)  # frame 0 + 4 blocks of 8 frames (tiny)
    assert run.info.artifact_uri.startswith((home / "mlartifacts").resolve().as_uri())


def test_kill_9_then_rerun_resumes_to_the_same_parameters(setup: tuple[Path, Path]) -> None:
    root, config = setup
    out = root / "killed"
    args = _cli(
        "train",
        "--stage",
        "action",
        "--data",
        str(root / "data"),
        "--out",
        str(out),
        "--config",
        str(config),
        "--no-track",
    )
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "step-00000002").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "step-00000006").exists()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = root / "straight"
    ref = subprocess.run(
        [*args[:-4], str(straight), "--config", str(config), "--no-track"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    a = load_file(str(out / "step-00000006" / "model.safetensors"))
    b = load_file(str(straight / "step-00000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_unknown_stage_is_a_one_line_error(setup: tuple[Path, Path]) -> None:
    root, _ = setup
    for stage, message in (("warp", "--stage must be one of"),):
        done = subprocess.run(
            _cli(
                "train",
                "--stage",
                stage,
                "--data",
                str(root / "data"),
                "--out",
                str(root / "x"),
                "--no-track",
            ),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_distill_starts_from_the_previous_stage_and_logs_per_expert_rates(setup: tuple[Path, Path]) -> None:
    root, _ = setup
    home = root / "home-d"
    first = subprocess.run(
        _cli(
            "train",
            "--stage",
            "action",
            "--data",
            str(root / "data"),
            "--out",
            str(root / "s1"),
            "--config",
            str(setup[1]),
            "--no-track",
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    cfg = stage_preset("distill")
    cfg = cfg.model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=9, steps=2),),
            "height": 32,
            "width": 32,
            "log_every": 1,
            "distill": cfg.distill.model_copy(update={"critic_steps_per_generator": 1}),  # type: ignore[union-attr]
        }
    )
    save_yaml(cfg, root / "distill.yaml")
    done = subprocess.run(
        _cli(
            "train",
            "--stage",
            "distill",
            "--data",
            str(root / "data"),
            "--out",
            str(root / "s3"),
            "--init",
            str(root / "s1"),
            "--config",
            str(root / "distill.yaml"),
        ),
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(home),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("worldloop-training").experiment_id])
    m = run.data.metrics
    assert {"critic_loss", "generator_loss", "dmd_grad_norm"} <= m.keys()
    assert (
        m["lr.student.expert0"] != m["lr.student.expert1"]
        and m["lr.critic.expert0"] != m["lr.critic.expert1"]
    )
    assert (root / "s3" / "step-00000002" / "critic.safetensors").exists()
    # Stage 4 continues from stage 3.
    long = stage_preset("long")
    long = long.model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=9, steps=2),),
            "height": 32,
            "width": 32,
            "distill": long.distill.model_copy(update={"critic_steps_per_generator": 1}),  # type: ignore[union-attr]
            "long": LongExtensionConfig(min_rollout_blocks=1, max_rollout_blocks=1, window_blocks=1),
        }
    )
    save_yaml(long, root / "long.yaml")
    extend = subprocess.run(
        _cli(
            "train",
            "--stage",
            "extend",
            "--data",
            str(root / "data"),
            "--out",
            str(root / "s4"),
            "--init",
            str(root / "s3"),
            "--config",
            str(root / "long.yaml"),
            "--no-track",
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert extend.returncode == 0, extend.stderr[-2000:]
    assert "stage extend: step 2" in extend.stdout
    assert (root / "s4" / "step-00000002" / "critic.safetensors").exists()


def test_checkpoints_on_s3_resume_on_another_machine(
    setup: tuple[Path, Path], s3_settings, tmp_path: Path
) -> None:
    import uuid

    from worldloop import storage
    from worldloop.components.training.run import run_stage
    from worldloop.config_io import load_yaml
    from worldloop.model.train.config import TrainConfig

    root, config = setup
    cfg = load_yaml(TrainConfig, config)
    out = f"s3://worldloop-test/{uuid.uuid4().hex}/action"
    first = s3_settings.model_copy(update={"home": tmp_path / "machine-a"})
    run = run_stage(cfg, data=str(root / "data"), out=out, max_steps=2, track=False, settings=first)
    assert run.result.steps == 2
    assert storage.read_bytes(f"{out}/latest", settings=first).decode().strip() == "step-00000002"
    names = {u.rsplit("/", 1)[1] for u in storage.list_uris(f"{out}/step-00000002", settings=first)}
    assert {"model.safetensors", "optimizer.safetensors", "ema.safetensors", "state.json"} <= names
    second = s3_settings.model_copy(update={"home": tmp_path / "machine-b"})  # nothing cached locally
    rest = run_stage(cfg, data=str(root / "data"), out=out, track=False, settings=second)
    assert rest.result.resumed_from == 2 and rest.result.steps == 6
    assert storage.read_bytes(f"{out}/latest", settings=second).decode().strip() == "step-00000006"
