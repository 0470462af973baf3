"""A thin JSON client for the Kubernetes API, shared by ``apply`` and ``status``.

Config loading and HTTP go through the official ``kubernetes`` client (kubeconfig contexts, exec/token
auth, TLS, in-cluster service accounts) but into a fresh ``Configuration`` — never the process-wide
default, so one call's ``context=`` cannot leak into another. Responses are parsed as plain JSON rather
than the client's generated models: the objects we handle include custom resources (``ray.io/v1``)
that have no model, and the error bodies we report are ``Status`` objects whose ``message`` and
``details.causes`` are what a user needs to see.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

JsonObject = dict[str, Any]

# (connect, read) seconds: the API server answers quickly or not at all; never hang a CLI forever.
_REQUEST_TIMEOUT_S = (10, 60)


class KubeError(Exception):
    """A request to the Kubernetes API failed. ``status`` is the HTTP code, 0 when there was no
    response (unreachable server, bad kubeconfig, TLS failure)."""

    def __init__(self, status: int, message: str, *, reason: str = "", details: JsonObject | None = None):
        self.status = status
        self.message = message
        self.reason = reason  # the Status ``reason`` ("Forbidden", "Invalid", "NotFound") or HTTP phrase
        self.details = details or {}  # the Status ``details``: name, kind (resource), causes
        causes = self.details.get("causes") or []
        self.fields = tuple(str(c["field"]) for c in causes if c.get("field"))  # of a 422 Invalid
        super().__init__(self.describe())

    def describe(self) -> str:
        """``"422 Invalid: <message> (fields: spec.x)"``, listing cause fields the message omits."""
        head = f"{self.status} {self.reason}".strip() if self.status else "no response"
        missing = [f for f in self.fields if f not in self.message]
        tail = f" (fields: {', '.join(missing)})" if missing else ""
        return f"{head}: {self.message}{tail}"


@dataclass
class StatusBody:
    """The parts of a ``meta/v1 Status`` error body we report."""

    message: str
    reason: str = ""
    details: JsonObject = field(default_factory=dict)


def connect(context: str | None = None, kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """An ``ApiClient`` for ``context`` in ``kubeconfig`` (default ``$KUBECONFIG`` / ``~/.kube/config``),
    falling back to the in-cluster service account when no kubeconfig exists and none was asked for."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
    except (kubernetes.config.ConfigException, OSError) as kube_error:
        if kubeconfig is not None or context is not None:
            raise KubeError(0, f"cannot load kubeconfig: {kube_error}") from kube_error
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException as cluster_error:
            raise KubeError(
                0, f"no kubeconfig ({kube_error}) and not running in a cluster ({cluster_error})"
            ) from cluster_error
    return kubernetes.client.ApiClient(configuration)


@contextmanager
def session(
    api_client: kubernetes.client.ApiClient | None, context: str | None, kubeconfig: str | None
) -> Iterator[kubernetes.client.ApiClient]:
    """``api_client`` when given (the caller owns it), else a fresh ``connect`` closed on exit."""
    if api_client is not None:
        yield api_client
        return
    api = connect(context, kubeconfig)
    try:
        yield api
    finally:
        api.close()


def request_json(
    api: kubernetes.client.ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: JsonObject | None = None,
    content_type: str = "application/json",
) -> JsonObject:
    """Send one request and return the JSON response; a non-2xx answer raises ``KubeError`` carrying
    the API's ``Status`` message, a transport failure raises ``KubeError`` with status 0."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    try:
        response = api.call_api(
            path,
            method,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=_REQUEST_TIMEOUT_S,
        )
    except ApiException as error:
        raise api_error(error) from error
    except urllib3.exceptions.HTTPError as error:
        host = api.configuration.host
        raise KubeError(0, f"cannot reach the Kubernetes API at {host}: {error}") from error
    data = response.data
    parsed = json.loads(data) if data else {}
    if not isinstance(parsed, dict):
        raise KubeError(response.status, f"expected a JSON object from {method} {path}, got {data[:200]!r}")
    return parsed


def parse_status(body: bytes | str | None) -> StatusBody | None:
    """The ``Status`` in an error body, or None when the body is not one (a proxy's HTML page)."""
    try:
        parsed = json.loads(body or b"")
    except ValueError:
        return None
    if not isinstance(parsed, dict) or parsed.get("kind") != "Status":
        return None
    return StatusBody(
        message=str(parsed.get("message", "")),
        reason=str(parsed.get("reason", "")),
        details=parsed.get("details") or {},
    )


def api_error(error: ApiException) -> KubeError:
    """``KubeError`` from the client's exception, preferring the ``Status`` body's words."""
    status = int(error.status or 0)
    parsed = parse_status(error.body)
    if parsed is None:
        text = error.body.decode(errors="replace") if isinstance(error.body, bytes) else str(error.body or "")
        return KubeError(status, text.strip()[:500] or str(error.reason), reason=str(error.reason or ""))
    reason = parsed.reason or str(error.reason or "")
    return KubeError(status, parsed.message, reason=reason, details=parsed.details)


def is_missing_object(error: KubeError, resource: str, name: str) -> bool:
    """A 404 for object ``name`` of ``resource`` (plural, e.g. "deployments"), as opposed to one for a
    resource type the server does not serve (``details`` empty: "the server could not find the requested
    resource") or for a missing namespace (``details.kind`` "namespaces")."""
    details = error.details
    return error.status == 404 and details.get("name") == name and details.get("kind") == resource
