"""``apply_objects`` and ``cluster_status`` against a fake Kubernetes API server (``tests/fake_kube.py``),
reached through a kubeconfig the test writes: discovery, server-side apply PATCHes, dry runs, diffs,
API errors, and readiness of the platform's components."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fake_kube import APPLY_PATCH, Failure, FakeKube, write_kubeconfig

from worldloop.k8s.apply import ApplyError, apply_objects
from worldloop.k8s.client import KubeError
from worldloop.k8s.status import ComponentStatus, cluster_status

NS = "worldloop"


@dataclass
class Cluster:
    fake: FakeKube
    kubeconfig: str

    def apply(self, objects: list[dict[str, Any]], **kwargs: Any) -> list[Any]:
        return apply_objects(objects, context="fake", kubeconfig=self.kubeconfig, **kwargs)

    def status(self) -> dict[str, ComponentStatus]:
        found = cluster_status(NS, context="fake", kubeconfig=self.kubeconfig)
        return {c.name: c for c in found}


def _cluster(tmp_path: Path, fake: FakeKube) -> Iterator[Cluster]:
    server, url = fake.serve()
    kubeconfig = write_kubeconfig(tmp_path / f"kubeconfig-{server.server_address[1]}", url, fake.token)
    try:
        yield Cluster(fake, str(kubeconfig))
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, FakeKube())


@pytest.fixture
def cluster_without_ray(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, FakeKube(with_ray=False))


def _manifests() -> list[dict[str, Any]]:
    def meta(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/part-of": "worldloop"}}

    container = {
        "name": "mlflow",
        "image": "ghcr.io/mlflow/mlflow:v2.14.1",
        "env": [{"name": "A", "value": "1"}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta("worldloop-config"),
            "data": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta("mlflow"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "mlflow"}},
                "template": {"metadata": {"labels": {"app": "mlflow"}}, "spec": {"containers": [container]}},
            },
        },
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": meta("worldloop"),
            "spec": {"serveConfigV2": "applications: []\n", "rayClusterConfig": {"rayVersion": "2.30.0"}},
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},  # listed last, applied first
    ]


# --------------------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------------------


def test_dry_run_patches_every_object_in_order_and_stores_nothing(cluster: Cluster) -> None:
    results = cluster.apply(_manifests(), dry_run=True)

    patches = cluster.fake.patches()
    assert [p.path for p in patches] == [
        f"/api/v1/namespaces/{NS}",
        f"/api/v1/namespaces/{NS}/configmaps/worldloop-config",
        f"/apis/apps/v1/namespaces/{NS}/deployments/mlflow",
        f"/apis/ray.io/v1/namespaces/{NS}/rayservices/worldloop",
    ]
    for patch in patches:
        assert patch.headers["content-type"] == APPLY_PATCH
        assert patch.query == {"fieldManager": ["worldloop"], "force": ["true"], "dryRun": ["All"]}
        assert patch.headers["authorization"] == "Bearer fake-token"  # context "fake", not the current one
    assert patches[2].body == _manifests()[1]
    assert cluster.fake.objects == {}
    # The namespace does not exist yet, so the server could not check the objects inside it.
    assert [(r.kind, r.action) for r in results] == [
        ("Namespace", "created (dry run)"),
        ("ConfigMap", "created (dry run, namespace pending)"),
        ("Deployment", "created (dry run, namespace pending)"),
        ("RayService", "created (dry run, namespace pending)"),
    ]
    discovery = [r.path for r in cluster.fake.requests if r.method == "GET" and "namespaces" not in r.path]
    assert discovery == ["/api/v1", "/apis", "/apis/apps/v1", "/apis/ray.io/v1"]  # each fetched once


def test_dry_run_against_existing_namespace_is_validated(cluster: Cluster) -> None:
    cluster.apply(_manifests()[3:])
    results = cluster.apply(_manifests(), dry_run=True)
    assert [r.action for r in results] == ["unchanged (dry run)"] + ["created (dry run)"] * 3
    assert len(cluster.fake.objects) == 1


def test_apply_creates_then_unchanged_then_configured_with_diff(cluster: Cluster) -> None:
    created = cluster.apply(_manifests())
    assert [(r.kind, r.name, r.namespace, r.action, r.diff) for r in created] == [
        ("Namespace", NS, None, "created", []),
        ("ConfigMap", "worldloop-config", NS, "created", []),
        ("Deployment", "mlflow", NS, "created", []),
        ("RayService", "worldloop", NS, "created", []),
    ]
    stored = cluster.fake.get("apps/v1", "deployments", NS, "mlflow")
    assert stored is not None and stored["spec"]["revisionHistoryLimit"] == 10  # server default
    assert "dryRun" not in cluster.fake.patches()[0].query

    again = cluster.apply(_manifests())
    assert [r.action for r in again] == ["unchanged"] * 4
    assert all(r.diff == [] for r in again)

    changed = _manifests()
    deployment = changed[1]["spec"]
    deployment["replicas"] = 2
    deployment["template"]["spec"]["containers"][0]["env"][0]["value"] = "2"
    changed[0]["metadata"]["labels"]["app.kubernetes.io/version"] = "0.2"
    third = cluster.apply(changed)
    assert [r.action for r in third] == ["unchanged", "configured", "configured", "unchanged"]
    assert third[1].diff == ['metadata.labels["app.kubernetes.io/version"]: <none> -> "0.2"']
    assert third[2].diff == [
        "spec.replicas: 1 -> 2",
        'spec.template.spec.containers[name=mlflow].env[name=A].value: "1" -> "2"',
    ]
    stored = cluster.fake.get("apps/v1", "deployments", NS, "mlflow")
    assert stored is not None and stored["spec"]["replicas"] == 2


def test_forbidden_names_object_and_reports_applied(cluster: Cluster) -> None:
    cluster.fake.failures["Deployment"] = Failure(403)
    with pytest.raises(ApplyError) as caught:
        cluster.apply(_manifests())
    error = caught.value
    assert (error.status, error.kind, error.namespace, error.name) == (403, "Deployment", NS, "mlflow")
    assert str(error).startswith(
        f'Deployment {NS}/mlflow: 403 Forbidden: deployments.apps "mlflow" is forbidden'
    )
    assert "cannot patch resource" in error.message
    assert [(r.kind, r.action) for r in error.applied] == [("Namespace", "created"), ("ConfigMap", "created")]
    assert cluster.fake.get("ray.io/v1", "rayservices", NS, "worldloop") is None  # stopped at the failure


def test_invalid_lists_the_field(cluster: Cluster) -> None:
    cluster.fake.failures["RayService"] = Failure(
        422, (("spec.serveConfigV2", "Invalid value: must be YAML"),)
    )
    with pytest.raises(ApplyError) as caught:
        cluster.apply(_manifests())
    error = caught.value
    assert (error.status, error.reason, error.fields) == (422, "Invalid", ("spec.serveConfigV2",))
    assert str(error) == (
        f'RayService {NS}/worldloop: 422 Invalid: RayService.ray.io "worldloop" is invalid: '
        "spec.serveConfigV2: Invalid value: must be YAML"
    )
    assert len(error.applied) == 3


def test_unknown_kind_says_what_to_install(cluster_without_ray: Cluster) -> None:
    with pytest.raises(ApplyError) as caught:
        cluster_without_ray.apply(_manifests())
    error = caught.value
    assert error.status == 404 and error.kind == "RayService"
    assert "no resource for ray.io/v1 RayService — is the KubeRay operator installed?" in str(error)
    assert not any("rayservices" in r.path for r in cluster_without_ray.fake.requests)


def test_context_chooses_the_credentials(cluster: Cluster) -> None:
    with pytest.raises(ApplyError) as caught:  # the current context "stale" holds an expired token
        apply_objects(_manifests()[3:], kubeconfig=cluster.kubeconfig)
    assert caught.value.status == 401
    assert cluster.fake.requests[-1].headers["authorization"] == "Bearer expired"


def test_namespaced_object_without_namespace_is_rejected(cluster: Cluster) -> None:
    config_map = copy.deepcopy(_manifests()[0])
    del config_map["metadata"]["namespace"]
    with pytest.raises(ApplyError, match="set metadata.namespace"):
        cluster.apply([config_map])
    assert cluster.fake.patches() == []


def test_unreachable_server_raises_kube_error(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9", "t")  # discard port
    with pytest.raises(KubeError, match="cannot reach the Kubernetes API"):
        cluster_status(NS, context="fake", kubeconfig=str(kubeconfig))


# --------------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------------


def _deployment(name: str, ready: int, wanted: int, available: str) -> dict[str, Any]:
    condition = {"type": "Available", "status": available, "reason": "MinimumReplicasUnavailable"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"replicas": wanted},
        "status": {"readyReplicas": ready, "conditions": [condition]},
    }


def _rayservice(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "worldloop", "namespace": NS},
        "spec": {},
        "status": status,
    }


def _apps(**states: str) -> dict[str, Any]:
    statuses = {
        name: {"status": state, "message": "" if state == "RUNNING" else "boom"}
        for name, state in states.items()
    }
    return {"activeServiceStatus": {"applicationStatuses": statuses}}


def test_status_reports_each_component(cluster: Cluster) -> None:
    fake = cluster.fake
    fake.put(_deployment("mlflow", 1, 1, "True"))
    fake.put(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "postgres", "namespace": NS},
            "spec": {"replicas": 1},
            "status": {"replicas": 1},
        }
    )
    ready = {"conditions": [{"type": "Ready", "status": "True", "reason": "RunningServeApps"}]}
    fake.put(_rayservice({**ready, **_apps(worldloop="RUNNING")}))

    found = cluster.status()
    assert list(found) == ["mlflow", "minio", "postgres", "worldloop"]
    assert found["mlflow"] == ComponentStatus("mlflow", "Deployment", True, "1/1 ready")
    assert found["minio"] == ComponentStatus("minio", "Deployment", True, "not deployed (external S3?)")
    assert found["postgres"] == ComponentStatus("postgres", "StatefulSet", False, "0/1 ready")
    assert found["worldloop"] == ComponentStatus("worldloop", "RayService", True, "RUNNING: worldloop")


def test_status_deployment_not_available(cluster: Cluster) -> None:
    cluster.fake.put(_deployment("minio", 0, 1, "False"))
    minio = cluster.status()["minio"]
    assert not minio.ready
    assert minio.detail == "0/1 ready (Available=False: MinimumReplicasUnavailable)"


@pytest.mark.parametrize(
    ("status", "ready", "detail"),
    [
        (
            {"serviceStatus": "Running", **_apps(worldloop="RUNNING")},
            True,
            "RUNNING: worldloop",
        ),  # KubeRay <= 1.2
        (
            {"serviceStatus": "WaitForServeDeploymentReady"},
            False,
            "serviceStatus=WaitForServeDeploymentReady",
        ),
        (
            {
                "conditions": [{"type": "Ready", "status": "False", "reason": "Initializing"}],
                **_apps(worldloop="DEPLOYING"),
            },
            False,
            "DEPLOYING: worldloop; Ready=False: Initializing; worldloop: boom",
        ),
        (
            {"conditions": [{"type": "Ready", "status": "True"}], **_apps(a="RUNNING", b="DEPLOY_FAILED")},
            False,
            "DEPLOY_FAILED: b; RUNNING: a; b: boom",
        ),
        ({}, False, "no status yet"),
    ],
)
def test_status_rayservice_schemas(
    cluster: Cluster, status: dict[str, Any], ready: bool, detail: str
) -> None:
    cluster.fake.put(_rayservice(status))
    assert cluster.status()["worldloop"] == ComponentStatus("worldloop", "RayService", ready, detail)


def test_status_absent_rayservice_and_missing_operator(
    cluster: Cluster, cluster_without_ray: Cluster
) -> None:
    assert cluster.status()["worldloop"] == ComponentStatus(
        "worldloop", "RayService", False, "404: not found"
    )
    assert cluster.status()["mlflow"].detail == "404: not found"
    missing = cluster_without_ray.status()["worldloop"]
    assert not missing.ready
    assert missing.detail == "404: no resource for ray.io/v1 RayService — is the KubeRay operator installed?"


def test_status_unauthorized_is_a_detail(cluster: Cluster) -> None:
    cluster.fake.token = "rotated"  # every request now answers 401 with a Status body
    found = cluster.status()
    assert all(not c.ready and c.detail == "401: Unauthorized" for c in found.values())


def _cli(*args: str) -> Any:
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("worldloop"))
    return subprocess.run([exe, "infra", *args], capture_output=True, text=True, timeout=300)


def test_cli_apply_dry_run_then_errors_then_status(cluster: Cluster) -> None:
    """``worldloop infra apply --dry-run`` on the rendered dev overlay: one dry-run apply PATCH per
    object, in the rendered order, nothing stored; a 403 names the object; ``status`` reports it all."""
    from worldloop.k8s.render import RenderOptions, render

    objects = render("dev", RenderOptions())
    ctx = ("--context", "fake", "--kubeconfig", cluster.kubeconfig)
    out = _cli("apply", "--overlay", "dev", "--dry-run", *ctx)
    assert out.returncode == 0, out.stderr
    patches = [r for r in cluster.fake.requests if r.method == "PATCH"]
    assert [p.body["metadata"]["name"] for p in patches] == [o["metadata"]["name"] for o in objects]
    assert all(p.query.get("dryRun") == ["All"] and p.headers["content-type"] == APPLY_PATCH for p in patches)
    assert not cluster.fake.objects
    assert f"{len(objects)} objects checked (dry run)" in out.stdout
    assert "RayService" in out.stdout and "worldloop" in out.stdout

    cluster.fake.failures["RoleBinding"] = Failure(403)
    denied = _cli("apply", "--overlay", "dev", *ctx)
    assert denied.returncode == 1
    assert "apply failed: RoleBinding worldloop/" in denied.stderr and "403 Forbidden" in denied.stderr
    assert "Traceback" not in denied.stderr

    status = _cli("status", *ctx)
    assert status.returncode == 1  # applied objects have no ready replicas (no controllers here)
    assert "mlflow" in status.stdout and "NO" in status.stdout
    unreachable = _cli(
        "status", "--context", "fake", "--kubeconfig", str(Path(cluster.kubeconfig).parent / "none")
    )
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
