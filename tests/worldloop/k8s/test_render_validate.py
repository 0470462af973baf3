"""The kustomize overlays render (pure Python, equal to ``kubectl kustomize``), validate offline, and
broken manifests are rejected with the document and the field named; the CLI around both."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from worldloop.k8s.render import REPO_ROOT, RenderOptions, iter_containers, render, to_yaml, write_rendered
from worldloop.k8s.validate import Problem, validate_dir, validate_objects

INFRA = REPO_ROOT / "infra"
WORLDLOOP = Path(sys.executable).parent / "worldloop"
KUBECTL = Path("/usr/bin/kubectl")


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in ("dev", "prod")}


def _serve_args(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config = yaml.safe_load(_find(objects, "RayService", "worldloop")["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == "worldloop.serving.app:build_app" and app["route_prefix"] == "/"
    return dict(app["args"])


def _worker(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(_find(objects, "RayService", "worldloop")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0])


# ------------------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlays_render_and_validate_clean(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    assert validate_objects(objects, file=overlay) == []
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment"} <= kinds
    assert {"StatefulSet", "Service", "PersistentVolumeClaim", "NetworkPolicy", "RayService"} <= kinds
    assert objects[0]["kind"] == "Namespace" and objects[-1]["kind"] == "RayService"  # kubectl's order
    assert all(o["metadata"].get("namespace") == "worldloop" for o in objects if o["kind"] != "Namespace")
    assert not [o for o in objects if o["kind"] == "Secret"]
    for c in iter_containers(objects):  # every image pinned by the kustomize `images` tags
        assert re.search(r":[\w.-]+$", c["image"]) and not c["image"].endswith(":latest"), c["image"]


def test_overlay_differences(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    assert _serve_args(dev)["sp"] == 1 and _serve_args(prod)["sp"] == 2
    gpu = "nvidia.com/gpu"
    assert _worker(dev)["template"]["spec"]["containers"][0]["resources"]["limits"][gpu] == "1"
    assert _worker(prod)["template"]["spec"]["containers"][0]["resources"]["limits"][gpu] == "2"
    assert (_worker(prod)["minReplicas"], _worker(prod)["maxReplicas"]) == (1, 4)
    assert {o["metadata"]["name"] for o in prod if o["kind"] == "PodDisruptionBudget"} == {
        "mlflow",
        "ray-workers",
    }
    assert not [o for o in dev if o["kind"] == "PodDisruptionBudget"]
    assert _find(prod, "Deployment", "mlflow")["spec"]["replicas"] == 2
    assert all(c.get("imagePullPolicy") == "IfNotPresent" for c in iter_containers(prod))


def test_serve_config_args_are_serve_options(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The RayService runs the builder `worldloop serve` runs, with arguments it accepts."""
    from worldloop.serving.app import ServeOptions, build_app

    assert f"{build_app.__module__}:{build_app.__name__}" == "worldloop.serving.app:build_app"
    for objects in rendered.values():
        opts = ServeOptions.model_validate(_serve_args(objects))
        assert opts.device == "cuda" and str(opts.model) == "models:/worldloop@champion"


def test_options_override_the_overlay() -> None:
    options = RenderOptions(
        image_registry="registry.example.com/ml",
        image_tag="1.2.3",
        sp=4,
        worker_replicas_min=2,
        worker_replicas_max=6,
        model_uri="models:/worldloop@candidate",
        fp8=True,
    )
    objects = render("dev", options)
    args = _serve_args(objects)
    assert (args["sp"], args["fp8"], args["model"]) == (4, True, "models:/worldloop@candidate")
    assert (args["replicas"], args["max_replicas"]) == (2, 6)
    worker = _worker(objects)
    assert (worker["minReplicas"], worker["maxReplicas"], worker["replicas"]) == (2, 6, 2)
    resources = worker["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "4"
    images = [c["image"] for c in iter_containers(objects)]
    ours = [i for i in images if "/worldloop" in i]
    assert len(ours) == 3  # MLflow (component image), Ray head and worker (serving image)
    assert all(i.startswith("registry.example.com/ml/worldloop") and i.endswith(":1.2.3") for i in ours)
    assert sorted(set(images) - set(ours)) == [
        "postgres:16.4",
        "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z",
    ]
    assert validate_objects(objects) == []
    more_gpus = render("dev", RenderOptions(sp=2, gpus_per_worker=4))
    assert (
        _worker(more_gpus)["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == "4"
    )
    with pytest.raises(ValueError, match="at least the SP degree"):
        RenderOptions(sp=4, gpus_per_worker=2)
    with pytest.raises(ValueError, match="min 3 is above max 2"):
        RenderOptions(worker_replicas_min=3, worker_replicas_max=2)


def test_external_s3_patch_renders(tmp_path: Path) -> None:
    """The prod overlay's documented external-S3 option: an overlay on top of prod."""
    patch = INFRA / "k8s/overlays/prod/patches/external-s3.yaml"
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{INFRA / 'k8s/overlays/prod'}]\npatches:\n  - path: {patch}\n", encoding="utf-8"
    )
    objects = render(tmp_path)
    data = _find(objects, "ConfigMap", "worldloop-settings")["data"]
    assert (
        data["WORLDLOOP_S3_ENDPOINT_URL"].startswith("https://s3.") and data["WORLDLOOP_PROFILE"] == "cluster"
    )
    assert validate_objects(objects) == []


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="commonLabels"):
        render(tmp_path)
    with pytest.raises(FileNotFoundError, match="known: \\['dev', 'prod'\\]"):
        render("staging")


@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl not installed: no reference renderer")
@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_same_objects_as_kubectl_kustomize(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(INFRA / "k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return (o["kind"], o["metadata"]["name"])

    assert sorted(rendered[overlay], key=key) == sorted(theirs, key=key)


# --------------------------------------------------------------------------------------------- rejects


def _break(objects: list[dict[str, Any]], edit: Any) -> list[Problem]:
    broken = copy.deepcopy(objects)
    edit(broken)
    return validate_objects(broken, file="x.yaml")


def _one(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def _ray(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(_find(objs, "RayService", "worldloop")["spec"]["rayClusterConfig"])


def test_broken_manifests_are_rejected_with_document_and_field(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["dev"]
    mlflow = next(
        i for i, o in enumerate(objects) if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow"
    )
    ray = len(objects) - 1

    def replicas(objs: list[dict[str, Any]]) -> None:
        objs[mlflow]["spec"]["replicas"] = "two"

    p = _one(_break(objects, replicas))
    assert (p.index, p.kind, p.name, p.field) == (mlflow, "Deployment", "mlflow", "spec.replicas")
    assert "not of type 'integer'" in p.message
    assert str(p).startswith(f"x.yaml#{mlflow} Deployment/mlflow: spec.replicas: ")

    def typo(objs: list[dict[str, Any]]) -> None:
        objs[mlflow]["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"

    p = _one(_break(objects, typo))
    assert (p.field, p.message) == ("spec.template.spec.containers[0].imagePullPolcy", "unknown field")

    def no_group_name(objs: list[dict[str, Any]]) -> None:
        del _ray(objs)["workerGroupSpecs"][0]["groupName"]

    p = _one(_break(objects, no_group_name))
    assert (p.index, p.kind, p.name) == (ray, "RayService", "worldloop")
    assert (p.field, p.message) == (
        "spec.rayClusterConfig.workerGroupSpecs[0].groupName",
        "required field missing",
    )

    def ray_typo(objs: list[dict[str, Any]]) -> None:
        _ray(objs)["workerGroupSpecs"][0]["minReplica"] = 1
        _ray(objs)["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"

    fields = {p.field: p.message for p in _break(objects, ray_typo)}
    assert fields == {
        "spec.rayClusterConfig.workerGroupSpecs[0].minReplica": "unknown field (not in the CRD schema)",
        "spec.rayClusterConfig.headGroupSpec.template.spec.containers[0].imagePullPolcy": (
            "unknown field (not in the CRD schema)"
        ),
    }

    def ray_type(objs: list[dict[str, Any]]) -> None:
        _ray(objs)["workerGroupSpecs"][0]["maxReplicas"] = "four"

    p = _one(_break(objects, ray_type))
    assert p.field == "spec.rayClusterConfig.workerGroupSpecs[0].maxReplicas" and "integer" in p.message


def test_project_rules(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["dev"]
    minio = next(
        i for i, o in enumerate(objects) if o["kind"] == "Deployment" and o["metadata"]["name"] == "minio"
    )
    where = "spec.template.spec.containers[0]"

    def bare(objs: list[dict[str, Any]]) -> None:
        c = objs[minio]["spec"]["template"]["spec"]["containers"][0]
        del c["resources"]["limits"], c["livenessProbe"]
        c["env"].append({"name": "MINIO_SECRET_KEY", "value": "hunter2hunter2"})

    got = {(p.index, p.field, p.message) for p in _break(objects, bare)}
    assert got == {
        (minio, f"{where}.resources.limits", "cpu and memory not set"),
        (minio, f"{where}.livenessProbe", "probe missing"),
        (
            minio,
            f"{where}.env[2].value",
            "MINIO_SECRET_KEY looks like a secret: use valueFrom.secretKeyRef, not a literal value",
        ),
    }

    def secret(objs: list[dict[str, Any]]) -> None:
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "worldloop-s3"},
                "data": {"k": "dg=="},
            }
        )

    p = _one(_break(objects, secret))
    assert (p.index, p.kind, p.field) == (
        len(objects),
        "Secret",
        "data",
    ) and "must not be committed" in p.message

    def ray_without_probes(objs: list[dict[str, Any]]) -> None:  # KubeRay injects its own: accepted
        head = _ray(objs)["headGroupSpec"]["template"]["spec"]["containers"][0]
        del head["readinessProbe"], head["livenessProbe"]

    assert _break(objects, ray_without_probes) == []

    def gpu_without_limit(objs: list[dict[str, Any]]) -> None:
        del _ray(objs)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]

    p = _one(_break(objects, gpu_without_limit))
    assert p.field.endswith("containers[0].resources.limits.nvidia.com/gpu")


# ------------------------------------------------------------------------------------------------ files


def test_validate_dir_names_the_file(tmp_path: Path, rendered: dict[str, list[dict[str, Any]]]) -> None:
    files = write_rendered(rendered["dev"], tmp_path)
    assert sorted(tmp_path.glob("*.yaml")) == sorted(files) and len(files) == len(rendered["dev"])
    assert validate_dir(tmp_path) == []
    target = next(f for f in files if f.name.endswith("-deployment-mlflow.yaml"))
    doc = yaml.safe_load(target.read_text())
    doc["spec"]["replicas"] = "two"
    target.write_text(yaml.safe_dump(doc))
    (p,) = validate_dir(tmp_path)
    assert (p.file, p.index, p.field) == (str(target), 0, "spec.replicas")
    (tmp_path / "zz-broken.yaml").write_text("a: [\n")
    assert any(p.message.startswith("not valid YAML") for p in validate_dir(tmp_path))


def test_one_source_of_truth_in_a_rendered_folder(
    tmp_path: Path, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """``--single-file`` writes only all.yaml (and replaces per-object files); validate reads every YAML
    file, so a broken all.yaml fails, and an object defined in two files is named as applied twice."""
    objects = rendered["dev"]
    write_rendered(objects, tmp_path)
    (single,) = write_rendered(objects, tmp_path, single_file=True)
    assert [p.name for p in tmp_path.glob("*.yaml")] == ["all.yaml"] and single.name == "all.yaml"
    assert validate_dir(tmp_path) == []
    doc_count = len(objects)
    single.write_text(single.read_text().replace("replicas: 1", "replicas: one", 1))
    (p,) = validate_dir(tmp_path)
    assert p.file == str(single) and p.field == "spec.replicas"
    write_rendered(objects, tmp_path / "again")
    (tmp_path / "again" / "all.yaml").write_text(to_yaml(objects))  # both layouts in one folder
    twice = validate_dir(tmp_path / "again")
    assert len(twice) == doc_count
    assert all("kubectl apply -f would apply it twice" in p.message for p in twice)
    assert {p.file for p in twice} == {str(tmp_path / "again" / "all.yaml")}


def test_no_secret_values_committed() -> None:
    """Nothing under infra/ carries a secret value: no Secret data, no token-like literals in env values."""
    token = re.compile(r"^(?=.*[A-Z])(?=.*[a-z])(?=.*[0-9])[A-Za-z0-9+/=_\-]{20,}$")  # base64-looking
    for path in sorted(INFRA.rglob("*.yaml")):
        if path.parent.name == "schemas":
            continue
        text = path.read_text(encoding="utf-8")
        assert "stringData" not in text, path
        for doc in yaml.safe_load_all(text):
            docs = doc if isinstance(doc, list) else [doc]
            for d in docs:
                if isinstance(d, dict) and d.get("kind") == "Secret":
                    raise AssertionError(f"{path}: a Secret is committed")
        for value in re.findall(r"^\s*-?\s*value:\s*(\S+)\s*$", text, re.M):
            assert not token.match(value.strip("'\"")), f"{path}: token-like value {value}"


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_render_then_validate(tmp_path: Path) -> None:
    out = tmp_path / "prod"
    done = subprocess.run(
        [
            str(WORLDLOOP),
            "infra",
            "render",
            "--overlay",
            "prod",
            "--out",
            str(out),
            "--image-tag",
            "9.9.9",
            "--sp",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "rendered 28 objects of overlay prod" in done.stdout
    assert not (out / "all.yaml").exists()
    assert "sp: 4" in "".join(p.read_text() for p in out.glob("*.yaml"))
    ok = subprocess.run(
        [str(WORLDLOOP), "infra", "validate", str(out)], capture_output=True, text=True, timeout=120
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, "28 documents valid"), ok.stderr
    broken = next(out.glob("*-deployment-mlflow.yaml"))
    broken.write_text(broken.read_text().replace("replicas: 2", "replicas: two"))
    bad = subprocess.run(
        [str(WORLDLOOP), "infra", "validate", str(out)], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"{broken}#0 Deployment/mlflow: spec.replicas: 'two' is not of type 'integer', 'null'"
    ]
    usage = subprocess.run(
        [
            str(WORLDLOOP),
            "infra",
            "render",
            "--overlay",
            "prod",
            "--out",
            str(out),
            "--sp",
            "4",
            "--gpus-per-worker",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert usage.returncode == 2 and "at least the SP degree" in usage.stderr
