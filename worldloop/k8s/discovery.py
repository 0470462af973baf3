"""Map ``apiVersion`` + ``kind`` to a REST path through the API server's discovery documents.

A manifest names ``apps/v1 Deployment`` or ``ray.io/v1 RayService``; the API wants
``/apis/apps/v1/namespaces/{ns}/deployments/{name}``. The plural resource name and whether the kind
is namespaced come from discovery (``GET /api/v1``, ``GET /apis``, ``GET /apis/{group}/{version}``,
each an ``APIResourceList`` / ``APIGroupList``) — the same source ``kubectl`` uses — so built-in kinds
and custom resources resolve alike, and a kind whose CRD is missing fails with a message that says so
instead of a bare 404 from a guessed path. One ``Discovery`` caches the documents it fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import kubernetes

from worldloop.k8s.client import JsonObject, KubeError, request_json

# Who installs the CRDs of a group we deploy to, for the "unknown kind" message.
_GROUP_PROVIDERS = {"ray.io": "the KubeRay operator"}


@dataclass(frozen=True)
class ResourceRef:
    """Where objects of one kind live: ``group_version`` ("v1", "apps/v1"), plural ``resource``."""

    group_version: str
    resource: str
    namespaced: bool

    def path(self, name: str, namespace: str | None) -> str:
        """REST path of object ``name``; ``namespace`` is required exactly when the kind is namespaced."""
        root = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced:
            assert namespace, f"{self.resource} is namespaced: a namespace is required"
            root += f"/namespaces/{quote(namespace, safe='')}"
        return f"{root}/{self.resource}/{quote(name, safe='')}"


class Discovery:
    """Resolves kinds against one API server, fetching each discovery document at most once."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self._api = api
        self._served: set[str] | None = None  # group versions listed by GET /apis
        self._kinds: dict[str, dict[str, ResourceRef]] = {}  # group version -> kind -> ref

    def resolve(self, api_version: str, kind: str) -> ResourceRef:
        """The resource serving ``kind`` in ``api_version``; ``KubeError`` 404 when the server has none."""
        kinds = self._kinds.get(api_version)
        if kinds is None:
            kinds = self._kinds[api_version] = self._fetch(api_version)
        ref = kinds.get(kind)
        if ref is None:
            raise KubeError(404, unknown_kind_message(api_version, kind), reason="NotFound")
        return ref

    def invalidate(self) -> None:
        """Forget everything fetched, e.g. after applying a CustomResourceDefinition."""
        self._served = None
        self._kinds.clear()

    def _fetch(self, api_version: str) -> dict[str, ResourceRef]:
        if api_version == "v1":
            return _resources(request_json(self._api, "GET", "/api/v1"))
        if "/" not in api_version:
            raise KubeError(404, f"apiVersion {api_version!r} is neither 'v1' nor 'group/version'")
        if self._served is None:
            self._served = _served_group_versions(request_json(self._api, "GET", "/apis"))
        if api_version not in self._served:
            return {}
        return _resources(request_json(self._api, "GET", f"/apis/{api_version}"))


def _served_group_versions(group_list: JsonObject) -> set[str]:
    """Every ``group/version`` of an ``APIGroupList``."""
    return {
        str(version["groupVersion"])
        for group in group_list.get("groups") or []
        for version in group.get("versions") or []
    }


def _resources(resource_list: JsonObject) -> dict[str, ResourceRef]:
    """kind -> ref for an ``APIResourceList``, skipping subresources ("deployments/scale") which
    share their parent's kind or name another one (``Scale``)."""
    group_version = str(resource_list.get("groupVersion", ""))
    refs: dict[str, ResourceRef] = {}
    for entry in resource_list.get("resources") or []:
        name = str(entry["name"])
        if "/" in name:
            continue
        refs[str(entry["kind"])] = ResourceRef(group_version, name, bool(entry.get("namespaced")))
    return refs


def unknown_kind_message(api_version: str, kind: str) -> str:
    """Why ``kind`` cannot be served, and which component to install."""
    group = api_version.rpartition("/")[0]
    provider = _GROUP_PROVIDERS.get(group)
    hint = f"is {provider} installed?" if provider else "is its CustomResourceDefinition installed?"
    if not group:
        hint = "check the kind's spelling"
    return f"no resource for {api_version} {kind} — {hint}"
