"""Readiness of the platform's components in one namespace, one line each.

``worldloop infra status`` answers "is it up?" from the objects' own status, as the controllers report
it: the MLflow and MinIO Deployments, the Postgres StatefulSet and the ``worldloop`` RayService. MinIO
may be absent on purpose (an external S3 store), so its absence counts as ready. The RayService is
judged by its ``Ready`` condition (KubeRay >= 1.3) or, on older operators, ``serviceStatus: Running``,
and in both cases every Serve application in ``activeServiceStatus.applicationStatuses`` must be
``RUNNING``. An HTTP error for one component (403, 404) becomes that component's detail; only an
unreachable API server raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import kubernetes

from worldloop.k8s.client import JsonObject, KubeError, is_missing_object, request_json, session
from worldloop.k8s.discovery import ResourceRef, unknown_kind_message

_DETAIL_WIDTH = 160  # characters of a controller message kept in a detail


@dataclass(frozen=True)
class ComponentStatus:
    """One component: ``ready`` and a one-line ``detail`` ("1/1 ready", "RUNNING: worldloop")."""

    name: str
    kind: str
    ready: bool
    detail: str


Check = Callable[[JsonObject], tuple[bool, str]]


@dataclass(frozen=True)
class _Component:
    name: str
    kind: str
    ref: ResourceRef
    check: Check
    absent_detail: str | None = None  # set when absence is a valid setup (reported ready)


def _deployment(obj: JsonObject) -> tuple[bool, str]:
    wanted = int((obj.get("spec") or {}).get("replicas", 1))
    status = obj.get("status") or {}
    ready_count = int(status.get("readyReplicas") or 0)
    available = _condition(status, "Available")
    detail = f"{ready_count}/{wanted} ready"
    if available is None:
        return False, f"{detail} (no Available condition yet)"
    if available.get("status") != "True":
        return False, f"{detail} (Available={available.get('status')}: {_reason(available)})"
    return ready_count >= wanted, detail


def _statefulset(obj: JsonObject) -> tuple[bool, str]:
    wanted = int((obj.get("spec") or {}).get("replicas", 1))
    ready_count = int((obj.get("status") or {}).get("readyReplicas") or 0)
    return ready_count >= wanted, f"{ready_count}/{wanted} ready"


def _rayservice(obj: JsonObject) -> tuple[bool, str]:
    status = obj.get("status") or {}
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    by_state: dict[str, list[str]] = {}
    for app, app_status in sorted(apps.items()):
        by_state.setdefault(str(app_status.get("status", "UNKNOWN")), []).append(app)
    parts = [f"{state}: {', '.join(names)}" for state, names in sorted(by_state.items())]
    apps_running = set(by_state) <= {"RUNNING"}

    ready_condition = _condition(status, "Ready")
    if ready_condition is not None:  # KubeRay >= 1.3
        service_ready = ready_condition.get("status") == "True"
        if not service_ready:
            parts.append(f"Ready={ready_condition.get('status')}: {_reason(ready_condition)}")
    elif status.get("serviceStatus"):  # KubeRay <= 1.2: "Running" once serving
        service_ready = status["serviceStatus"] == "Running"
        if not service_ready or not parts:
            parts.append(f"serviceStatus={status['serviceStatus']}")
    else:
        service_ready = bool(apps)
        if not apps:
            parts.append("no status yet")
    failed = [
        f"{app}: {_one_line(str(apps[app].get('message', '')))}"
        for app in sorted(apps)
        if apps[app].get("status") != "RUNNING" and apps[app].get("message")
    ]
    return service_ready and apps_running, "; ".join(parts + failed) or "Ready"


_DEPLOYMENTS = ResourceRef("apps/v1", "deployments", namespaced=True)
_STATEFULSETS = ResourceRef("apps/v1", "statefulsets", namespaced=True)
_RAYSERVICES = ResourceRef("ray.io/v1", "rayservices", namespaced=True)
COMPONENTS = (
    _Component("mlflow", "Deployment", _DEPLOYMENTS, _deployment),
    _Component("minio", "Deployment", _DEPLOYMENTS, _deployment, absent_detail="not deployed (external S3?)"),
    _Component("postgres", "StatefulSet", _STATEFULSETS, _statefulset),
    _Component("worldloop", "RayService", _RAYSERVICES, _rayservice),
)


def cluster_status(
    namespace: str,
    *,
    context: str | None = None,
    kubeconfig: str | None = None,
    api_client: kubernetes.client.ApiClient | None = None,
) -> list[ComponentStatus]:
    """Status of every component in ``COMPONENTS`` within ``namespace``, in that order. Raises
    ``KubeError`` when the kubeconfig cannot be loaded or the API server does not answer."""
    with session(api_client, context, kubeconfig) as api:
        return [_component_status(api, component, namespace) for component in COMPONENTS]


def _component_status(
    api: kubernetes.client.ApiClient, component: _Component, namespace: str
) -> ComponentStatus:
    try:
        obj = request_json(api, "GET", component.ref.path(component.name, namespace))
    except KubeError as error:
        if error.status == 0:
            raise
        ready, detail = False, f"{error.status}: {_one_line(error.message)}"
        if is_missing_object(error, component.ref.resource, component.name):
            ready, detail = component.absent_detail is not None, component.absent_detail or "404: not found"
        elif error.status == 404 and not error.details:  # the resource type itself is not served
            detail = f"404: {unknown_kind_message(component.ref.group_version, component.kind)}"
        return ComponentStatus(component.name, component.kind, ready, detail)
    ready, detail = component.check(obj)
    return ComponentStatus(component.name, component.kind, ready, detail)


def _condition(status: JsonObject, kind: str) -> JsonObject | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _reason(condition: JsonObject) -> str:
    return _one_line(" ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k)))


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_WIDTH else text[: _DETAIL_WIDTH - 3] + "..."
