"""Server-side apply of rendered manifests, with a per-object report of what changed.

Every object is sent as ``PATCH {path}?fieldManager=worldloop&force=true`` with
``Content-Type: application/apply-patch+yaml`` (plus ``dryRun=All`` for a dry run): the API server merges
it, owns conflict resolution and defaulting, and records ``worldloop`` as the manager of the fields we
set — the same mechanism as ``kubectl apply --server-side``, without a last-applied annotation. REST
paths come from API discovery (``discovery.py``), so CRD kinds such as ``ray.io/v1 RayService`` work
like built-in ones.

Before each PATCH the live object is fetched so the result can say "created", "configured" (with a
field-level diff) or "unchanged". The diff compares the live object with the API's answer to the apply
— both normalised by the server, so ``cpu: 0.5`` vs ``500m`` is not a change — at the paths our
manifest sets, which leaves out server-populated fields (``status``, defaults, ``managedFields``).

Objects are applied in the given order, Namespaces first. The first failure stops the run and raises
``ApplyError`` carrying the results of the objects already applied: later objects usually depend on
earlier ones (a Deployment on its ConfigMap), and a partial apply is easier to reason about when it
stops at a known point. Re-running after a fix is safe, since apply is idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import kubernetes

from worldloop.k8s.client import JsonObject, KubeError, is_missing_object, request_json, session
from worldloop.k8s.discovery import Discovery, ResourceRef

APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON

# Actions of an ApplyResult; a dry run appends DRY_RUN_SUFFIX to the first three.
CREATED, CONFIGURED, UNCHANGED = "created", "configured", "unchanged"
DRY_RUN_SUFFIX = " (dry run)"
# Dry run of an object whose Namespace this same dry run would create: the API server cannot validate
# it (its namespace does not exist yet), so it was checked by discovery only.
CREATED_NAMESPACE_PENDING = "created (dry run, namespace pending)"

# Metadata the server writes; never part of a diff even if a manifest carried it.
_SERVER_METADATA = frozenset(
    {"managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink"}
)
_VALUE_WIDTH = 60  # characters of a value shown in a diff line


@dataclass(frozen=True)
class ApplyResult:
    """What applying one object did. ``action`` is ``created``, ``configured`` or ``unchanged``, each
    suffixed ``" (dry run)"`` in a dry run, or ``CREATED_NAMESPACE_PENDING``. ``diff`` lists the changed
    fields as ``"spec.replicas: 1 -> 2"`` for ``configured``, and is empty otherwise."""

    kind: str
    name: str
    namespace: str | None
    action: str
    diff: list[str]


class ApplyError(KubeError):
    """Applying ``kind`` ``namespace/name`` failed; ``applied`` holds the results of the objects
    applied before it. ``status`` is the HTTP code (0: no response or rejected before sending)."""

    def __init__(
        self, error: KubeError, *, kind: str, name: str, namespace: str | None, applied: list[ApplyResult]
    ):
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.applied = applied
        super().__init__(error.status, error.message, reason=error.reason, details=error.details)

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}: {super().describe()}"


def apply_objects(
    objects: list[JsonObject],
    *,
    context: str | None = None,
    kubeconfig: str | None = None,
    dry_run: bool = False,
    field_manager: str = "worldloop",
    api_client: kubernetes.client.ApiClient | None = None,
) -> list[ApplyResult]:
    """Server-side apply ``objects`` (Namespaces first, otherwise in order) to the cluster of
    ``context`` in ``kubeconfig`` (or ``api_client``). Raises ``ApplyError`` at the first failure and
    ``KubeError`` when the kubeconfig cannot be loaded."""
    for obj in objects:
        _identity(obj)  # malformed input fails before anything is sent
    with session(api_client, context, kubeconfig) as api:
        return _apply_in_order(api, objects, dry_run, field_manager)


def _apply_in_order(
    api: kubernetes.client.ApiClient, objects: list[JsonObject], dry_run: bool, field_manager: str
) -> list[ApplyResult]:
    discovery = Discovery(api)
    results: list[ApplyResult] = []
    new_namespaces: set[str] = set()  # created by this run (or would be, in a dry run)
    for obj in sorted(objects, key=lambda o: o["kind"] != "Namespace"):  # stable: keeps the order
        api_version, kind, name, namespace = _identity(obj)
        try:
            ref = discovery.resolve(api_version, kind)
            namespace = _namespace_for(ref, namespace)
            result = _apply_one(api, ref, obj, namespace, dry_run, field_manager, new_namespaces)
        except KubeError as error:
            raise ApplyError(
                error, kind=kind, name=name, namespace=namespace, applied=list(results)
            ) from error
        if kind == "Namespace" and result.action.startswith(CREATED):
            new_namespaces.add(name)
        if kind == "CustomResourceDefinition" and not dry_run:
            discovery.invalidate()  # its kind is served from now on
        results.append(result)
    return results


def _apply_one(
    api: kubernetes.client.ApiClient,
    ref: ResourceRef,
    obj: JsonObject,
    namespace: str | None,
    dry_run: bool,
    field_manager: str,
    new_namespaces: set[str],
) -> ApplyResult:
    kind, name = str(obj["kind"]), str(obj["metadata"]["name"])
    path = ref.path(name, namespace)
    live = _get_live(api, path, ref, name)
    query = [("fieldManager", field_manager), ("force", "true")]
    if dry_run:
        query.append(("dryRun", "All"))
    try:
        applied = request_json(api, "PATCH", path, query=query, body=obj, content_type=APPLY_PATCH)
    except KubeError as error:
        missing_namespace = error.status == 404 and error.details.get("kind") == "namespaces"
        if dry_run and missing_namespace and error.details.get("name") in new_namespaces:
            return ApplyResult(kind, name, namespace, CREATED_NAMESPACE_PENDING, [])
        raise
    diff = [] if live is None else field_diff(obj, live, applied)
    action = CREATED if live is None else CONFIGURED if diff else UNCHANGED
    return ApplyResult(kind, name, namespace, action + (DRY_RUN_SUFFIX if dry_run else ""), diff)


def _get_live(api: kubernetes.client.ApiClient, path: str, ref: ResourceRef, name: str) -> JsonObject | None:
    try:
        return request_json(api, "GET", path)
    except KubeError as error:
        if is_missing_object(error, ref.resource, name):
            return None
        raise


def _identity(obj: JsonObject) -> tuple[str, str, str, str | None]:
    """(apiVersion, kind, name, namespace) of a manifest; ValueError when one is missing."""
    metadata = obj.get("metadata") or {}
    api_version, kind, name = obj.get("apiVersion"), obj.get("kind"), metadata.get("name")
    if not (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)):
        raise ValueError(
            f"a manifest needs apiVersion, kind and metadata.name; got {api_version} {kind} {name}"
        )
    namespace = metadata.get("namespace")
    return api_version, kind, name, str(namespace) if namespace else None


def _namespace_for(ref: ResourceRef, namespace: str | None) -> str | None:
    if not ref.namespaced:
        return None
    if namespace is None:
        raise KubeError(0, f"{ref.resource} are namespaced: set metadata.namespace in the manifest")
    return namespace


# --------------------------------------------------------------------------------------------------
# Field-level diff
# --------------------------------------------------------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "<none>"


_ABSENT: Any = _Absent()


def field_diff(desired: JsonObject, live: JsonObject, applied: JsonObject) -> list[str]:
    """``"path: old -> new"`` for every field ``desired`` sets whose value differs between ``live``
    and ``applied``. Lists of objects with unique ``name``s (containers, env, ports) are matched by
    name and shown as ``containers[name=app]``; other lists by index."""
    lines: list[str] = []
    for key, want in desired.items():
        if key == "status":
            continue
        if key == "metadata" and isinstance(want, dict):
            want = {k: v for k, v in want.items() if k not in _SERVER_METADATA}
        _walk(want, live.get(key, _ABSENT), applied.get(key, _ABSENT), key, lines)
    return lines


def _walk(want: Any, old: Any, new: Any, path: str, lines: list[str]) -> None:
    if isinstance(want, dict):
        for key, sub in want.items():
            _walk(sub, _child(old, key), _child(new, key), _join(path, key), lines)
    elif isinstance(want, list) and want and all(isinstance(item, dict) for item in want):
        _walk_object_list(want, old, new, path, lines)
    elif old != new:
        lines.append(f"{path}: {_show(old)} -> {_show(new)}")


def _walk_object_list(want: list[Any], old: Any, new: Any, path: str, lines: list[str]) -> None:
    old_items = old if isinstance(old, list) else []
    new_items = new if isinstance(new, list) else []
    names = [item.get("name") for item in want]
    if all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
        old_by_name = {item.get("name"): item for item in old_items if isinstance(item, dict)}
        new_by_name = {item.get("name"): item for item in new_items if isinstance(item, dict)}
        for name, item in zip(names, want, strict=True):
            at = f"{path}[name={name}]"
            _walk(item, old_by_name.get(name, _ABSENT), new_by_name.get(name, _ABSENT), at, lines)
        return
    if len(old_items) != len(new_items):
        lines.append(f"{path}: {len(old_items)} items -> {len(new_items)} items")
    for index, item in enumerate(want):
        old_item = old_items[index] if index < len(old_items) else _ABSENT
        new_item = new_items[index] if index < len(new_items) else _ABSENT
        _walk(item, old_item, new_item, f"{path}[{index}]", lines)


def _child(value: Any, key: str) -> Any:
    return value.get(key, _ABSENT) if isinstance(value, dict) else _ABSENT


def _join(path: str, key: str) -> str:
    # Label and annotation keys contain dots and slashes: quote them so the path stays readable.
    plain = key.replace("_", "").replace("-", "").isalnum()
    return f"{path}.{key}" if plain else f"{path}[{json.dumps(key)}]"


def _show(value: Any) -> str:
    text = repr(value) if value is _ABSENT else json.dumps(value, sort_keys=True)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 3] + "..."
