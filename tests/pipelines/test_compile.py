"""Compiled IR: reproducible, every stage present, GPUs and scheduling on the training tasks only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from worldloop.cli.main import run
from worldloop.pipelines.catalog import PIPELINES, compile_pipeline, resolve_arguments
from worldloop.pipelines.cluster import ClusterConfig, load_cluster_config
from worldloop.pipelines.full import build

ROOT = Path(__file__).resolve().parents[2]
TRAINING = [f"comp-train-stage{s}" for s in ("", "-2", "-3", "-4", "-5")]


def _docs(path: Path) -> tuple[dict, dict]:
    pipeline, platform = yaml.safe_load_all(path.read_text())
    return pipeline, platform


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_compile_is_byte_reproducible(tmp_path: Path, name: str) -> None:
    a = compile_pipeline(name, tmp_path / "a.yaml")
    assert run(["pipeline", "compile", name, "--out", str(tmp_path / "b.yaml")]) == 0
    assert a.read_bytes() == (tmp_path / "b.yaml").read_bytes()


def test_full_has_every_stage_with_gpus_on_training(tmp_path: Path) -> None:
    spec, platform = _docs(compile_pipeline("full", tmp_path / "full.yaml"))
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {
        "synth",
        "synth-2",
        "synth-3",
        "curate",
        "mix-data",
        "mix-data-2",
        "train-stage",
        "train-stage-2",
        "train-stage-3",
        "train-stage-4",
        "train-stage-5",
        "evaluate",
        "quality",
        "register",
    }
    stages = [
        tasks[t]["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"] for t in tasks if "train" in t
    ]
    assert sorted(stages) == sorted(["vae", "action", "instruction", "distill", "long"])
    assert "init" not in tasks["train-stage"]["inputs"].get("artifacts", {})  # stage 0 starts the chain

    def producer(task: str, artifact: str) -> str:
        return str(tasks[task]["inputs"]["artifacts"][artifact]["taskOutputArtifact"]["producerTask"])

    # every stage reads the curated clips (through a mixing step, with SynthWorld's labelled ones);
    # stage 4 (the last) mixes them with SynthWorld's long clips and trains on long windows
    for t in tasks:
        if t.startswith("train-stage"):
            assert producer(t, "data") == ("mix-data-2" if t == "train-stage-5" else "mix-data"), t
    assert producer("mix-data", "curated") == "curate" and producer("mix-data", "synthetic") == "synth"
    assert producer("mix-data-2", "curated") == "curate" and producer("mix-data-2", "synthetic") == "synth-3"
    assert producer("curate", "raw") == "synth-2"
    long_frames = tasks["train-stage-5"]["inputs"]["parameters"]["clip_frames"]["componentInputParameter"]
    assert long_frames == "long_frames"
    assert tasks["train-stage-4"]["inputs"]["parameters"]["clip_frames"]["runtimeValue"]["constant"] == 0
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["source_uri"]["defaultValue"] == "" and params["synthetic_weight"]["defaultValue"] == 0.5
    for i in range(2, 6):  # each stage starts from the one before: the VAE travels down the chain
        producer = tasks[f"train-stage-{i}"]["inputs"]["artifacts"]["init"]["taskOutputArtifact"][
            "producerTask"
        ]
        assert producer == ("train-stage" if i == 2 else f"train-stage-{i - 1}")
    for step in ("evaluate", "quality", "register"):  # the last stage's checkpoint is what is measured
        assert tasks[step]["inputs"]["artifacts"]["checkpoint"]["taskOutputArtifact"]["producerTask"] == (
            "train-stage-5"
        )
    assert (
        tasks["register"]["inputs"]["artifacts"]["quality"]["taskOutputArtifact"]["producerTask"] == "quality"
    )
    executors = spec["deploymentSpec"]["executors"]
    kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == ClusterConfig().image
        is_training = name.replace("exec-", "comp-") in TRAINING
        assert ("accelerator" in container.get("resources", {})) is is_training, name
        assert ("tolerations" in kube[name]) is is_training, name
        assert ("nodeSelector" in kube[name]) is is_training, name
        assert kube[name]["pvcMount"][0]["mountPath"] == "/data"
        assert kube[name]["secretAsEnv"][0]["secretName"] == "worldloop-s3"
    gpu = executors["exec-train-stage-3"]["container"]["resources"]["accelerator"]
    assert gpu["resourceType"] == "nvidia.com/gpu" and gpu["resourceCount"] == "1"
    assert kube["exec-train-stage-3"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert all(t.get("retryPolicy", {}).get("maxRetryCount") == 2 for t in tasks.values())
    assert tasks["register"]["cachingOptions"] == {}  # every run registers its own version


def test_cluster_config_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "image: registry.local/wl:dev\ngpu_type: nvidia.com/mig-1g.10gb\ngpu_count: 2\nretries: 0\n"
    )
    cfg = load_cluster_config(path)
    spec, _ = _docs(compile_pipeline("full", tmp_path / "full.yaml", cluster=cfg))
    gpu = spec["deploymentSpec"]["executors"]["exec-train-stage"]["container"]["resources"]["accelerator"]
    assert (gpu["resourceType"], gpu["resourceCount"]) == ("nvidia.com/mig-1g.10gb", "2")
    assert (
        spec["deploymentSpec"]["executors"]["exec-register"]["container"]["image"] == "registry.local/wl:dev"
    )
    path.write_text("gpus: 2\n")
    with pytest.raises(ValueError, match="gpus"):
        load_cluster_config(path)


def test_arguments_are_typed() -> None:
    args = resolve_arguments(build(), {"clips": "3", "preset": "tiny"})
    assert args["clips"] == 3 and args["max_steps"] == 0
    with pytest.raises(ValueError, match="is not int"):
        resolve_arguments(build(), {"clips": "three"})
    assert run(["pipeline", "run", "curation"]) == 2  # source_uri is required


def test_components_import_only_stdlib_and_kfp_at_top_level() -> None:
    allowed = set(sys.stdlib_module_names) | {"kfp", "worldloop.components.base_image"}
    for path in sorted((ROOT / "components").glob("*/component.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for name in names:
                    assert name in allowed or str(name).split(".")[0] in allowed, f"{path}: {name}"
