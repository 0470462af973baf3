"""A Kubernetes API server for tests: discovery, GET and server-side-apply PATCH of objects, with real
``APIResourceList``/``APIGroupList``/``Status`` bodies, bearer-token auth, scripted failures, and a log
of every request. Apply is simplified to one field manager: the body replaces the object, the server
adds metadata and a few defaults and keeps ``status``, and ``dryRun=All`` stores nothing.

Objects can also be created (POST to their collection: 201, or 409 AlreadyExists), listed (GET of
the collection, ``labelSelector`` with ``k=v`` terms) and deleted (removed at once, as if no
finalizer held them); ``on_create`` hooks play a controller (KubeRay) for a kind. Pod logs are
served as a real server does: text, ``timestamps=true`` prefixes each line with its RFC 3339 time,
``sinceTime`` keeps the lines from that second on, a pod still Pending answers 400.

Each bearer token is a user (``users``; ``token`` is the deployer service account), and POST of a
``SelfSubjectReview`` answers who that user is, as ``kubectl auth whoami`` asks a real server (1.28+;
``with_self_review=False`` is an older one)."""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

NOW = "2026-01-01T00:00:00Z"
APPLY_PATCH = "application/apply-patch+yaml"

# group version -> (resource, kind, namespaced), subresources included as a real server lists them.
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("namespaces", "Namespace", False),
        ("namespaces/status", "Namespace", False),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
        ("pods/log", "Pod", True),
        ("secrets", "Secret", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
    ],
    "apps/v1": [
        ("deployments", "Deployment", True),
        ("deployments/scale", "Scale", True),
        ("deployments/status", "Deployment", True),
        ("statefulsets", "StatefulSet", True),
        ("statefulsets/status", "StatefulSet", True),
    ],
    "rbac.authorization.k8s.io/v1": [
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("clusterroles", "ClusterRole", False),
        ("rolebindings", "RoleBinding", True),
        ("roles", "Role", True),
    ],
    "networking.k8s.io/v1": [("ingresses", "Ingress", True), ("networkpolicies", "NetworkPolicy", True)],
    "authentication.k8s.io/v1": [
        ("selfsubjectreviews", "SelfSubjectReview", False),
        ("tokenreviews", "TokenReview", False),
    ],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "ray.io/v1": [
        ("rayclusters", "RayCluster", True),
        ("rayjobs", "RayJob", True),
        ("rayservices", "RayService", True),
        ("rayservices/status", "RayService", True),
    ],
}
_OBJECT_PATH = re.compile(
    r"/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>[^/]+)/(?P<name>[^/]+)"
)
_COLLECTION_PATH = re.compile(
    r"/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>[^/]+)"
)
_LOG_PATH = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log")

Key = tuple[str, str, str | None, str]  # group version, resource, namespace, name
REVIEWS = "authentication.k8s.io/v1"  # create-only resources: reviews are answered, never stored
SELF_SUBJECT_REVIEWS = f"/apis/{REVIEWS}/selfsubjectreviews"
AUTHENTICATED = "system:authenticated"  # every authenticated user's group, as a real server adds it


@dataclass(frozen=True)
class User:
    """Who a bearer token authenticates as (``status.userInfo`` of a SelfSubjectReview)."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


DEPLOYER = User("system:serviceaccount:ci:deployer", ("system:serviceaccounts", "system:serviceaccounts:ci"))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased: HTTP header names are case-insensitive
    body: Any


@dataclass(frozen=True)
class Failure:
    """A scripted answer to PATCH of a kind: 403 Forbidden, or 422 Invalid with (field, message) causes."""

    code: int
    causes: tuple[tuple[str, str], ...] = ()


@dataclass
class FakeKube:
    token: str = "fake-token"  # the deployer's (DEPLOYER)
    with_ray: bool = True  # False: the KubeRay CRDs are not installed
    with_self_review: bool = True  # False: a server before Kubernetes 1.28 (no SelfSubjectReview v1)
    users: dict[str, User] = field(default_factory=dict)  # more bearer tokens -> who they are
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)  # kind -> failure of its PATCH
    requests: list[Request] = field(default_factory=list)
    on_create: dict[str, Callable[[dict[str, Any]], None]] = field(default_factory=dict)  # kind -> controller
    logs: dict[tuple[str, str], list[tuple[str, str]]] = field(
        default_factory=dict
    )  # (ns, pod) -> (time, line)

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                url = urlparse(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Request(
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    yaml.safe_load(raw) if raw else None,
                )
                fake.requests.append(request)
                status, body = fake.handle(request)
                text = isinstance(body, str)  # a pod log
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_POST = do_DELETE = _handle  # noqa: N815

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval keeps ``server.shutdown()`` (which waits for the next poll) quick.
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    # ----------------------------------------------------------------------------------------------

    def served(self) -> dict[str, list[tuple[str, str, bool]]]:
        served = {gv: r for gv, r in RESOURCES.items() if self.with_ray or not gv.startswith("ray.io/")}
        if not self.with_self_review:  # before 1.28 the group served TokenReview only
            served[REVIEWS] = [r for r in served[REVIEWS] if r[1] != "SelfSubjectReview"]
        return served

    def user(self, request: Request) -> User | None:
        """Who the request's bearer token authenticates as; None: nobody (401)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer":
            return None
        return DEPLOYER if token == self.token else self.users.get(token)

    def put(self, obj: dict[str, Any]) -> None:
        """Store ``obj`` as if a controller had created it (status included)."""
        gv, (resource, namespaced) = obj["apiVersion"], self._lookup(obj["apiVersion"], obj["kind"])
        namespace = obj["metadata"].get("namespace") if namespaced else None
        self.objects[(gv, resource, namespace, obj["metadata"]["name"])] = copy.deepcopy(obj)

    def get(self, gv: str, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((gv, resource, namespace, name))

    def patches(self) -> list[Request]:
        return [r for r in self.requests if r.method == "PATCH"]

    def log(self, namespace: str, pod: str, line: str, *, at: str) -> None:
        """Append ``line`` to ``pod``'s log, written at ``at`` (RFC 3339)."""
        self.logs.setdefault((namespace, pod), []).append((at, line))

    def _lookup(self, gv: str, kind: str) -> tuple[str, bool]:
        return next((r, ns) for r, k, ns in self.served()[gv] if k == kind and "/" not in r)

    def handle(self, request: Request) -> tuple[int, dict[str, Any] | str]:
        user = self.user(request)
        if user is None:
            return status(401, "Unauthorized", "Unauthorized")
        served = self.served()
        if request.path == SELF_SUBJECT_REVIEWS and self.with_self_review:
            return self_subject_review(request, user)
        if request.method == "POST" and _OBJECT_PATH.fullmatch(request.path):  # creation is not simulated
            return status(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
            )
        if request.method == "GET" and request.path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if request.method == "GET" and request.path == "/apis":
            return 200, group_list(served)
        if request.method == "GET" and (gv := _discovery_path(request.path)) in served:
            return 200, resource_list(gv, served[gv])
        if request.method == "GET" and (logs := _LOG_PATH.fullmatch(request.path)):
            return self._pod_log(logs["ns"], logs["name"], request.query)
        collection = _COLLECTION_PATH.fullmatch(request.path)
        if collection and request.method in ("GET", "POST"):
            return self._collection(request, collection)
        match = _OBJECT_PATH.fullmatch(request.path)
        gv = match and (match["core"] or match["gv"])
        entry = match and next((e for e in served.get(str(gv), []) if e[0] == match["res"]), None)
        if not match or not entry or entry[2] != (match["ns"] is not None):
            return status(404, "NotFound", "the server could not find the requested resource")
        key: Key = (str(gv), match["res"], match["ns"], match["name"])
        if request.method == "GET":
            live = self.objects.get(key)
            return (200, live) if live is not None else not_found(key)
        if request.method == "DELETE":
            if self.objects.pop(key, None) is None:
                return not_found(key)
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return self._apply(request, key, entry[1])

    def _collection(self, request: Request, match: re.Match[str]) -> tuple[int, dict[str, Any]]:
        """GET: the list (``labelSelector`` ``k=v,…``); POST: create the object (201, 409 if it exists)."""
        gv = str(match["core"] or match["gv"])
        entry = next((e for e in self.served().get(gv, []) if e[0] == match["res"]), None)
        if not entry or entry[2] != (match["ns"] is not None) or gv == REVIEWS:  # reviews: answered above
            return status(404, "NotFound", "the server could not find the requested resource")
        resource, kind, namespace = match["res"], entry[1], match["ns"]
        if request.method == "GET":
            terms = [t.split("=", 1) for t in request.query.get("labelSelector", [""])[-1].split(",") if t]
            items = [
                obj
                for (g, r, ns, _), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
                if (g, r, ns) == (gv, resource, namespace)
                and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in terms)
            ]
            return 200, {
                "kind": f"{kind}List",
                "apiVersion": gv,
                "metadata": {"resourceVersion": "1"},
                "items": items,
            }
        body = request.body if isinstance(request.body, dict) else {}
        name = body.get("metadata", {}).get("name")
        if (body.get("apiVersion"), body.get("kind")) != (gv, kind) or not name:
            return status(400, "BadRequest", "the object does not match the URL (or has no metadata.name)")
        if namespace is not None and ("v1", "namespaces", None, namespace) not in self.objects:
            return not_found(("v1", "namespaces", None, namespace))
        key: Key = (gv, resource, namespace, name)
        if key in self.objects:
            group, qualified = _qualified(gv, resource)
            details = {"name": name, "group": group, "kind": resource}
            return status(409, "AlreadyExists", f'{qualified} "{name}" already exists', details)
        created = {k: v for k, v in copy.deepcopy(body).items() if k != "status"}
        created["metadata"].update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=NOW,
            resourceVersion="1",
            generation=1,
        )
        if namespace is None:
            del created["metadata"]["namespace"]
        self.objects[key] = created
        if kind in self.on_create:
            self.on_create[kind](copy.deepcopy(created))
        return 201, created

    def _pod_log(
        self, namespace: str, name: str, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any] | str]:
        pod = self.objects.get(("v1", "pods", namespace, name))
        if pod is None:
            return not_found(("v1", "pods", namespace, name))
        if pod.get("status", {}).get("phase", "Pending") == "Pending":
            container = pod["spec"]["containers"][0]["name"]
            return status(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start')
        since = query.get("sinceTime", [""])[-1]
        stamps = query.get("timestamps", ["false"])[-1] == "true"
        lines = [(at, line) for at, line in self.logs.get((namespace, name), []) if at[:19] >= since[:19]]
        return 200, "".join(f"{at} {line}\n" if stamps else f"{line}\n" for at, line in lines)

    def _apply(self, request: Request, key: Key, kind: str) -> tuple[int, dict[str, Any]]:
        gv, resource, namespace, name = key
        query = {k: v[-1] for k, v in request.query.items()}
        if request.headers.get("content-type") != APPLY_PATCH:
            return status(415, "UnsupportedMediaType", "the body of the request was in an unknown format")
        if not query.get("fieldManager") or query.get("force") != "true":
            return status(400, "BadRequest", "fieldManager is required for apply requests (and force=true)")
        if query.get("dryRun", "All") != "All":
            return status(400, "BadRequest", f"Invalid dry run value: {query['dryRun']}")
        body = request.body
        if (body.get("apiVersion"), body.get("kind"), body["metadata"].get("name")) != (gv, kind, name):
            return status(400, "BadRequest", "the object does not match the URL")
        if (failure := self.failures.get(kind)) is not None:
            return scripted(failure, key, kind)
        if namespace is not None and ("v1", "namespaces", None, namespace) not in self.objects:
            return not_found(("v1", "namespaces", None, namespace))
        live = self.objects.get(key)
        result = _merged(body, live, query["fieldManager"])
        if "dryRun" not in query:
            self.objects[key] = result
        return (200 if live else 201), result


def self_subject_review(request: Request, user: User) -> tuple[int, dict[str, Any]]:
    """A real server's answer to a SelfSubjectReview: create-only, the body checked, the caller's user
    info (its groups plus ``system:authenticated``) in ``status``; nothing stored."""
    if request.method != "POST":
        return status(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )
    body = request.body if isinstance(request.body, dict) else {}
    if (body.get("apiVersion"), body.get("kind")) != (REVIEWS, "SelfSubjectReview"):
        got = f"{body.get('apiVersion')}, Kind={body.get('kind')}"
        return status(
            400, "BadRequest", f"the API version in the data ({got}) does not match the expected one"
        )
    info = {"username": user.username, "uid": user.uid, "groups": [*user.groups, AUTHENTICATED]}
    review = {
        "kind": "SelfSubjectReview",
        "apiVersion": REVIEWS,
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": info},
    }
    return 201, review


def _discovery_path(path: str) -> str | None:
    if path == "/api/v1":
        return "v1"
    match = re.fullmatch(r"/apis/([^/]+/[^/]+)", path)
    return match[1] if match else None


def _merged(body: dict[str, Any], live: dict[str, Any] | None, manager: str) -> dict[str, Any]:
    result = copy.deepcopy(body)
    _default(result)
    metadata = result["metadata"]
    old_meta = (live or {}).get("metadata", {})
    changed = live is None or {k: v for k, v in result.items() if k not in ("metadata", "status")} != {
        k: v for k, v in live.items() if k not in ("metadata", "status")
    }
    version = int(old_meta.get("resourceVersion", "0"))
    metadata.update(
        uid=old_meta.get("uid", str(uuid.uuid4())),
        creationTimestamp=old_meta.get("creationTimestamp", NOW),
        resourceVersion=str(version + 1 if changed else version),
        generation=old_meta.get("generation", 0) + (1 if changed else 0),
        managedFields=[{"manager": manager, "operation": "Apply", "apiVersion": body["apiVersion"]}],
    )
    if live and "status" in live:
        result["status"] = live["status"]
    return result


def _default(obj: dict[str, Any]) -> None:
    """A few of the defaults a real server fills in, so a diff must look only at manifest paths."""
    if obj["kind"] == "Deployment":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        for container in spec.get("template", {}).get("spec", {}).get("containers", []):
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("imagePullPolicy", "IfNotPresent")
    if obj["kind"] == "Namespace":
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})


def group_list(served: dict[str, list[tuple[str, str, bool]]]) -> dict[str, Any]:
    groups = []
    for gv in served:
        if "/" in gv:
            group, version = gv.split("/")
            entry = {"groupVersion": gv, "version": version}
            groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def resource_list(gv: str, resources: list[tuple[str, str, bool]]) -> dict[str, Any]:
    entries = []
    for resource, kind, namespaced in resources:
        sub = "/" in resource
        verbs = ["get", "patch", "update"] if sub else ["create", "delete", "get", "list", "patch", "update"]
        if gv == REVIEWS:
            verbs = ["create"]
        singular = "" if sub else kind.lower()
        entries.append(
            {
                "name": resource,
                "singularName": singular,
                "namespaced": namespaced,
                "kind": kind,
                "verbs": verbs,
            }
        )
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries}


def status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    body.update(message=message, reason=reason, details=details or {}, code=code)
    return code, body


def _qualified(gv: str, resource: str) -> tuple[str, str]:
    group = gv.rpartition("/")[0]
    return group, f"{resource}.{group}" if group else resource


def not_found(key: Key) -> tuple[int, dict[str, Any]]:
    gv, resource, _, name = key
    group, qualified = _qualified(gv, resource)
    details = {"name": name, "group": group, "kind": resource}
    return status(404, "NotFound", f'{qualified} "{name}" not found', details)


def scripted(failure: Failure, key: Key, kind: str) -> tuple[int, dict[str, Any]]:
    gv, resource, namespace, name = key
    group, qualified = _qualified(gv, resource)
    if failure.code == 403:
        message = (
            f'{qualified} "{name}" is forbidden: User "system:serviceaccount:ci:deployer" cannot patch '
            f'resource "{resource}" in API group "{group}" in the namespace "{namespace}"'
        )
        return status(403, "Forbidden", message, {"name": name, "group": group, "kind": resource})
    kind_group = f"{kind}.{group}" if group else kind
    summary = ", ".join(f"{f}: {m}" for f, m in failure.causes)
    causes = [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in failure.causes]
    details = {"name": name, "group": group, "kind": kind, "causes": causes}
    return status(422, "Invalid", f'{kind_group} "{name}" is invalid: {summary}', details)


def write_user_kubeconfig(path: Path, server: str, token: str) -> Path:
    """One context on ``server``, current, whose user presents ``token``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": token}}],
        "contexts": [{"name": "me", "context": {"cluster": "fake", "user": "me"}}],
        "current-context": "me",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    """Two contexts on ``server``: ``fake`` with ``token`` and the current ``stale`` with a wrong one."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [
            {"name": "deployer", "user": {"token": token}},
            {"name": "stale", "user": {"token": "expired"}},
        ],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "deployer"}},
            {"name": "stale", "context": {"cluster": "fake", "user": "stale"}},
        ],
        "current-context": "stale",
    }
    path.write_text(yaml.safe_dump(config))
    return path
