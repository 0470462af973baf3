"""Run a KubeRay ``RayJob`` to its end through the Kubernetes API: create it, stream its logs, wait.

KubeRay (``submissionMode: K8sJobMode``) starts the job's Ray cluster, then a Kubernetes Job of the
RayJob's name whose pod runs ``ray job submit`` and follows the driver's output: its log *is* the
job's log (the driver's and, forwarded by Ray, every worker's). The RayJob's ``status`` says where
it is — ``jobDeploymentStatus`` (Initializing, Running, Complete, Failed, ValidationFailed, …),
``jobStatus`` (the Ray job: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), ``reason`` and
``message`` (on failure KubeRay puts the entrypoint's exit code and last output there).

:func:`run_rayjob` polls both: each round reads the status and the new lines of the submitter pods'
logs (``sinceTime`` with timestamps, so a dropped connection loses nothing and nothing repeats).

Submitting twice is safe: a job that already exists under the name is followed, not duplicated (a
pipeline step restarted while its job ran); one that already failed is deleted and created again —
the training job resumes from its checkpoints. Needs, in the job's namespace: create/get/delete
``rayjobs`` and get/list ``pods``, ``pods/log`` (the ``pipeline-runner`` Role).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import kubernetes
from kubernetes.client.exceptions import ApiException

from worldloop.k8s.client import JsonObject, KubeError, api_error, is_missing_object, request_json, session

log = logging.getLogger(__name__)

FINISHED = ("Complete", "Failed", "ValidationFailed")  # jobDeploymentStatus values that end a RayJob
_TAIL_LINES = 30
_DELETE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RayJobStatus:
    """A RayJob's ``status`` as far as the caller cares."""

    deployment: str = ""
    job: str = ""
    reason: str = ""
    message: str = ""

    @classmethod
    def of(cls, obj: JsonObject) -> RayJobStatus:
        status = obj.get("status") or {}
        return cls(
            deployment=str(status.get("jobDeploymentStatus") or ""),
            job=str(status.get("jobStatus") or ""),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
        )

    @property
    def finished(self) -> bool:
        return self.deployment in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.deployment == "Complete" and self.job == "SUCCEEDED"


class RayJobFailed(RuntimeError):
    """The RayJob ended without success; the message holds KubeRay's reason and message and the log tail."""

    def __init__(self, namespace: str, name: str, status: RayJobStatus, tail: list[str]) -> None:
        self.status, self.tail = status, tail
        why = f"{status.deployment}/{status.job or '-'}" + (f", {status.reason}" if status.reason else "")
        text = f"RayJob {namespace}/{name} ended {why}: {status.message or 'no message'}"
        if tail:
            text += "\nlast log lines:\n" + "\n".join(tail)
        super().__init__(text)


def _collection(namespace: str) -> str:
    return f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs"


def submit_rayjob(api: kubernetes.client.ApiClient, manifest: JsonObject) -> JsonObject:
    """Create the RayJob ``manifest``; if one of its name exists, follow it, unless it failed: then it
    is deleted (with its cluster and submitter, foreground) and created again."""
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    collection = _collection(namespace)
    try:
        return request_json(api, "POST", collection, body=manifest)
    except KubeError as err:
        if err.status != 409:
            raise
    live = request_json(api, "GET", f"{collection}/{name}")
    status = RayJobStatus.of(live)
    if not status.finished or status.succeeded:
        log.info("RayJob %s/%s exists (%s): following it", namespace, name, status.deployment or "new")
        return live
    log.info("RayJob %s/%s ended %s before: deleting it and submitting again", namespace, name, status.job)
    request_json(
        api, "DELETE", f"{collection}/{name}", query=[("propagationPolicy", "Foreground")], body=None
    )
    deadline = time.monotonic() + _DELETE_TIMEOUT_S
    while True:
        try:
            request_json(api, "GET", f"{collection}/{name}")
        except KubeError as err:
            if is_missing_object(err, "rayjobs", name):
                break
            raise
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"RayJob {namespace}/{name} still exists {_DELETE_TIMEOUT_S:.0f} s after delete"
            )
        time.sleep(1.0)
    return request_json(api, "POST", collection, body=manifest)


@dataclass
class _SubmitterLogs:
    """New lines of the submitter pods' logs, read with ``sinceTime`` and de-duplicated by timestamp."""

    api: kubernetes.client.ApiClient
    namespace: str
    job: str
    on_line: Callable[[str], None]
    since: dict[str, str] = field(default_factory=dict)  # pod -> timestamp of its last line shown
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))

    def pods(self) -> list[str]:
        found = request_json(
            self.api,
            "GET",
            f"/api/v1/namespaces/{self.namespace}/pods",
            query=[("labelSelector", f"job-name={self.job}")],
        )
        items = sorted(
            found.get("items") or [], key=lambda p: str(p.get("metadata", {}).get("creationTimestamp", ""))
        )
        return [str(p["metadata"]["name"]) for p in items]

    def read(self) -> None:
        for pod in self.pods():
            self._read_pod(pod)

    def _read_pod(self, pod: str) -> None:
        query = [("timestamps", "true")]
        last = self.since.get(pod)
        if last is not None:
            query.append(("sinceTime", last[:19] + "Z"))  # RFC 3339 in whole seconds: from that second on
        try:
            text = _get_text(self.api, f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log", query)
        except KubeError as err:
            if err.status in (400, 404):  # not started yet (ContainerCreating) or gone
                return
            raise
        for line in text.splitlines():
            stamp, _, message = line.partition(" ")
            if last is not None and _instant(stamp) <= _instant(last):  # shown by the last read
                continue
            self.since[pod] = stamp
            self.tail.append(message)
            self.on_line(message)


def _instant(stamp: str) -> tuple[str, int]:
    """An RFC 3339 UTC timestamp as (whole seconds, nanoseconds): Kubernetes trims the fraction's
    trailing zeros, so the strings themselves do not sort."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return seconds, int(fraction.ljust(9, "0")[:9] or 0)


def _get_text(api: kubernetes.client.ApiClient, path: str, query: list[tuple[str, str]]) -> str:
    """A plain-text GET (pod logs); errors raise ``KubeError`` as :func:`request_json` does."""
    try:
        response = api.call_api(
            path,
            "GET",
            query_params=query,
            header_params={"Accept": "text/plain, */*"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=(10, 60),
        )
    except ApiException as error:
        raise api_error(error) from error
    return bytes(response.data).decode("utf-8", errors="replace")


def run_rayjob(
    manifest: JsonObject,
    *,
    api_client: kubernetes.client.ApiClient | None = None,
    context: str | None = None,
    kubeconfig: str | None = None,
    on_line: Callable[[str], None] | None = None,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
) -> RayJobStatus:
    """Submit ``manifest`` (:func:`submit_rayjob`), pass each new line of its log to ``on_line`` and
    wait for it to end. Returns its final status; raises :class:`RayJobFailed` unless it succeeded,
    ``TimeoutError`` after ``timeout_s`` (the job is left running: submitting again follows it)."""
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    with session(api_client, context, kubeconfig) as api:
        submit_rayjob(api, manifest)
        logs = _SubmitterLogs(api, namespace, name, on_line or (lambda line: log.info("%s", line)))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        shown = RayJobStatus()
        while True:
            status = RayJobStatus.of(request_json(api, "GET", f"{_collection(namespace)}/{name}"))
            if (status.deployment, status.job) != (shown.deployment, shown.job):
                log.info(
                    "RayJob %s/%s: %s / %s", namespace, name, status.deployment or "-", status.job or "-"
                )
                shown = status
            logs.read()
            if status.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"RayJob {namespace}/{name} still {status.deployment} after {timeout_s} s")
            time.sleep(poll_s)
    if not status.succeeded:
        raise RayJobFailed(namespace, name, status, list(logs.tail))
    return status
