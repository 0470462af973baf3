"""Who is calling the Kubernetes API, as the API server authenticated them, and what they may read.

The registry's decisions on a cluster are made as the caller's Kubernetes user rather than a name they
type: a ``SelfSubjectReview`` (``authentication.k8s.io/v1``, GA in Kubernetes 1.28) returns the user and
groups the API server resolved from the caller's credentials — what ``kubectl auth whoami`` prints.
The signing key is read from its Secret with those same credentials, so RBAC decides who can sign.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import kubernetes

from worldloop.k8s.client import KubeError, request_json, session

SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


@dataclass(frozen=True)
class KubeUser:
    """The caller as the API server sees them (``status.userInfo`` of a SelfSubjectReview)."""

    username: str
    groups: tuple[str, ...]


def who_am_i(
    *,
    context: str | None = None,
    kubeconfig: str | None = None,
    api_client: kubernetes.client.ApiClient | None = None,
) -> KubeUser:
    """The authenticated user behind the credentials of ``context`` in ``kubeconfig`` (or
    ``api_client``); raises :class:`KubeError` when the server cannot say."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    with session(api_client, context, kubeconfig) as api:
        try:
            review = request_json(api, "POST", SELF_SUBJECT_REVIEWS, body=body)
        except KubeError as err:
            if err.status != 404:
                raise
            why = f"this API server serves no SelfSubjectReview (v1 needs Kubernetes 1.28+): {err.message}"
            raise KubeError(404, why, reason=err.reason) from err
    user = (review.get("status") or {}).get("userInfo") or {}
    username, groups = user.get("username"), user.get("groups") or []
    if not isinstance(username, str) or not username or not isinstance(groups, list):
        raise KubeError(0, f"the SelfSubjectReview names no user: {review.get('status')!r}")
    return KubeUser(username, tuple(str(g) for g in groups))


def read_secret_value(
    namespace: str,
    name: str,
    key: str,
    *,
    context: str | None = None,
    kubeconfig: str | None = None,
    api_client: kubernetes.client.ApiClient | None = None,
) -> bytes:
    """The value of ``key`` in Secret ``namespace/name``, read as the caller (their RBAC applies)."""
    with session(api_client, context, kubeconfig) as api:
        secret = request_json(api, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    encoded = (secret.get("data") or {}).get(key)
    if not isinstance(encoded, str):
        raise KubeError(0, f"Secret {namespace}/{name} has no key {key!r}")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as err:
        raise KubeError(0, f"Secret {namespace}/{name} key {key!r} is not base64: {err}") from err
