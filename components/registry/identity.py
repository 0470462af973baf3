"""Who makes a registry decision, whether they may, and the key their decision is signed with.

* **cluster profile** — the caller is their Kubernetes user, authenticated by the API server through a
  ``SelfSubjectReview`` (:func:`worldloop.k8s.caller.who_am_i`); approvers are the members of the group
  :data:`APPROVER_GROUP`, which ``infra/k8s/base/rbac.yaml`` binds. A name given with ``--as`` (or
  ``WORLDLOOP_IDENTITY`` / ``WORLDLOOP_APPROVERS``) is refused: it would be a claim, not an identity.
  The signing key comes from the settings (a mounted Secret) or, for a person at the CLI, from the Secret
  ``settings.signing_secret`` read with their own credentials.
* **local profile** — the identity is asserted (``--as``, ``WORLDLOOP_IDENTITY``, else ``USER@HOST``) and
  approvers are ``settings.resolved_approvers`` (the demo approves its own candidate); decisions are
  signed with the local key (:func:`worldloop.platform.signing.local_signing_key`).
"""

from __future__ import annotations

from dataclasses import dataclass

from worldloop.k8s.caller import read_secret_value, who_am_i
from worldloop.k8s.client import KubeError
from worldloop.platform.signing import checked_key, configured_key, local_signing_key
from worldloop.settings import Profile, Settings

APPROVER_GROUP = "worldloop-approvers"  # the Kubernetes group bound to the Role of the same name
SIGNING_SECRET_KEY = "key"  # the data key of the signing Secret


@dataclass(frozen=True)
class Caller:
    """Who is acting: a Kubernetes user with their groups (cluster), or an asserted name (local)."""

    identity: str
    groups: tuple[str, ...] = ()
    authenticated: bool = False


def _kubeconfig(settings: Settings) -> str | None:
    return None if settings.kubeconfig is None else str(settings.kubeconfig)


def resolve_caller(asserted: str | None, settings: Settings) -> Caller:
    """The caller of a decision: ``asserted`` (``--as``) or the settings' identity locally; the
    authenticated Kubernetes user on a cluster, where ``asserted`` is refused (ValueError)."""
    if settings.profile is Profile.local:
        return Caller(asserted or settings.resolved_identity)
    if asserted is not None:
        raise ValueError(
            "--as is not accepted on the cluster profile: registry decisions are made as your Kubernetes "
            "user (see 'kubectl auth whoami'); switch context or credentials to act as someone else"
        )
    if settings.identity is not None or settings.approvers is not None:
        raise ValueError(
            "WORLDLOOP_IDENTITY and WORLDLOOP_APPROVERS apply to the local profile only: on a cluster the "
            f"identity is your Kubernetes user and approvers are the group {APPROVER_GROUP}; unset them"
        )
    try:
        user = who_am_i(kubeconfig=_kubeconfig(settings))
    except KubeError as err:
        raise RuntimeError(f"cannot authenticate you with the Kubernetes API: {err}") from err
    return Caller(user.username, user.groups, authenticated=True)


def unauthorised(caller: Caller, settings: Settings) -> str | None:
    """None when ``caller`` is an approver, else why not."""
    if settings.profile is Profile.cluster:
        if caller.authenticated and APPROVER_GROUP in caller.groups:
            return None
        return f"{caller.identity} is not in the Kubernetes group {APPROVER_GROUP}"
    approvers = settings.resolved_approvers
    if caller.identity in approvers:
        return None
    listed = ", ".join(approvers) if approvers else "none configured: set WORLDLOOP_APPROVERS"
    return f"{caller.identity} is not an authorised approver (approvers: {listed})"


def signing_key(settings: Settings) -> bytes:
    """The key a decision is signed with (asked for only once it is allowed, so a refused caller never
    needs to read it)."""
    if settings.profile is Profile.local:
        return local_signing_key(settings)
    key = configured_key(settings)
    if key is not None:
        return key
    namespace, _, name = settings.signing_secret.partition("/")
    try:
        data = read_secret_value(namespace, name, SIGNING_SECRET_KEY, kubeconfig=_kubeconfig(settings))
    except KubeError as err:
        raise RuntimeError(
            f"cannot read the signing key from Secret {settings.signing_secret} as your Kubernetes user: "
            f"{err} (members of {APPROVER_GROUP} may read it; or set WORLDLOOP_SIGNING_KEY_FILE)"
        ) from err
    return checked_key(data, f"Secret {settings.signing_secret} key {SIGNING_SECRET_KEY!r}")
