"""Validate rendered manifests offline: schemas, a strict unknown-field check and the project's rules.

Every problem names where it is (file and document index), the object (kind/name), the field path
(``spec.template.spec.containers[0].imagePullPolcy``) and what is wrong, so a broken manifest is
fixed without guessing.

- Built-in kinds: ``kubernetes_validate`` in strict mode (unknown fields rejected) against Kubernetes
  :data:`K8S_VERSION` — the oldest version the README asks for, so the manifests stay valid on it and newer.
- KubeRay ``RayService``/``RayJob`` (``ray.io/v1``): ``jsonschema`` against the CRD's
  ``openAPIV3Schema`` vendored in ``infra/schemas`` (``x-kubernetes-int-or-string`` → integer or
  string, ``nullable`` honoured), plus a strict walk of our own: CRD schemas accept unknown fields, so a
  key that is not among a schema's ``properties`` (where it has no ``additionalProperties`` and no
  ``x-kubernetes-preserve-unknown-fields``) is reported as an unknown field — typos do not pass.
- Project rules: every container has cpu and memory requests and limits, and (regular containers,
  and sidecar init containers) readiness and liveness probes; GPU requests equal their limits; no
  Secret with ``data``/``stringData`` (secrets are created with kubectl, never committed); no env
  ``value`` or ConfigMap entry whose name says it is a secret (KEY, SECRET, PASSWORD, TOKEN); a
  RayService's ``serveConfigV2`` parses. Exception: containers of a Ray head or worker group template
  may omit probes, since KubeRay injects its own readiness/liveness probes into Ray containers that
  have none (our manifests set them explicitly anyway, mirroring KubeRay's); so may the submitter pod
  of a RayJob (``spec.submitterPodTemplate``), a batch pod that runs ``ray job submit`` to its end.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from pydantic import BaseModel, ConfigDict

from worldloop.k8s.render import REPO_ROOT

K8S_VERSION = "1.30"
SCHEMA_DIR = REPO_ROOT / "infra" / "schemas"
CRD_FILES = {("ray.io", "RayService"): "ray.io_rayservices.yaml", ("ray.io", "RayJob"): "ray.io_rayjobs.yaml"}
_SECRET_NAME = re.compile(
    r"(^|[_\-.])(API_?)?(KEY|KEYS|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIALS?)([_\-.]|$)", re.I
)
_RAY_GROUP_TEMPLATE = re.compile(
    r"^spec(\.rayClusterConfig|\.rayClusterSpec)\.(headGroupSpec|workerGroupSpecs\[\d+\])"
    r"|^spec\.submitterPodTemplate\."
)

Obj = dict[str, Any]


class Problem(BaseModel):
    """One thing wrong with one document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    index: int
    kind: str
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}#{self.index} {self.kind}/{self.name}: {self.field or '(document)'}: {self.message}"
        )


def field_path(parts: Any) -> str:
    """``['spec', 'containers', 0, 'image']`` → ``spec.containers[0].image``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ------------------------------------------------------------------------------------------ CRD schemas


def _openapi_to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@cache
def crd_schema(group: str, kind: str, version: str = "v1") -> dict[str, Any] | None:
    """The vendored CRD's ``openAPIV3Schema`` for ``group/version kind``, as JSON Schema (None: no CRD)."""
    name = CRD_FILES.get((group, kind))
    if name is None:
        return None
    path = SCHEMA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"CRD schema {path} missing (vendored from KubeRay; see infra/schemas/README.md)"
        )
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema: dict[str, Any] = _openapi_to_jsonschema(v["schema"]["openAPIV3Schema"])
            return schema
    return None


def _unknown_fields(node: Any, schema: dict[str, Any], path: list[Any]) -> Iterator[tuple[str, str]]:
    """Keys the schema does not declare, where it does not allow extra keys."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(node, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None:
            for key, value in node.items():
                if key in props:
                    yield from _unknown_fields(value, props[key], [*path, key])
                elif extra is None or extra is False:
                    yield field_path([*path, key]), "unknown field (not in the CRD schema)"
        elif isinstance(extra, dict):
            for key, value in node.items():
                yield from _unknown_fields(value, extra, [*path, key])
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(node):
            yield from _unknown_fields(item, schema["items"], [*path, i])


def _schema_error(err: jsonschema.ValidationError) -> tuple[str, str]:
    path = list(err.absolute_path)
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [k for k in err.validator_value if k not in err.instance]
        if missing:
            return field_path([*path, missing[0]]), "required field missing"
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
        extra = [k for k in err.instance if k not in known]
        if extra:
            return field_path([*path, extra[0]]), "unknown field"
    message = err.message if len(err.message) <= 200 else err.message[:197] + "..."
    return field_path(path), message


def _schema_problems(obj: Obj) -> Iterator[tuple[str, str]]:
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    kind = str(obj.get("kind", ""))
    schema = crd_schema(group, kind, version) if group == "ray.io" else None
    if group == "ray.io" and schema is None:
        yield "apiVersion", f"no vendored CRD schema for {obj.get('apiVersion')} {kind}"
        return
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            yield _schema_error(err)
        yield from _unknown_fields(obj, schema, [])
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        yield _schema_error(err)
    except kubernetes_validate.SchemaNotFoundError as err:
        yield "kind", err.message


# ------------------------------------------------------------------------------------------ project rules


def _pod_specs(node: Any, path: list[Any]) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node, path
        for key, value in node.items():
            if key not in ("containers", "initContainers"):
                yield from _pod_specs(value, [*path, key])
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _pod_specs(item, [*path, i])


def _check_container(c: dict[str, Any], where: list[Any], *, probes: bool) -> Iterator[tuple[str, str]]:
    resources = c.get("resources") or {}
    for part in ("requests", "limits"):
        missing = [r for r in ("cpu", "memory") if r not in (resources.get(part) or {})]
        if missing:
            yield field_path([*where, "resources", part]), f"{' and '.join(missing)} not set"
    for res, amount in (resources.get("requests") or {}).items():
        if "gpu" in res and (resources.get("limits") or {}).get(res) != amount:
            yield field_path([*where, "resources", "limits", res]), "GPU limit must equal the request"
    if probes:
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                yield field_path([*where, probe]), "probe missing"
    for j, env in enumerate(c.get("env") or []):
        if isinstance(env, dict) and env.get("value") and _SECRET_NAME.search(str(env.get("name"))):
            message = f"{env['name']} looks like a secret: use valueFrom.secretKeyRef, not a literal value"
            yield field_path([*where, "env", j, "value"]), message


def _container_problems(obj: Obj) -> Iterator[tuple[str, str]]:
    ray_kind = str(obj.get("apiVersion", "")).startswith("ray.io/")
    for pod, pod_path in _pod_specs(obj, []):
        for list_name in ("initContainers", "containers"):
            for i, c in enumerate(pod.get(list_name) or []):
                if not isinstance(c, dict):
                    continue
                where = [*pod_path, list_name, i]
                sidecar = list_name == "initContainers" and c.get("restartPolicy") == "Always"
                kuberay_managed = ray_kind and bool(_RAY_GROUP_TEMPLATE.match(field_path(where)))
                probes = (list_name == "containers" or sidecar) and not kuberay_managed
                yield from _check_container(c, where, probes=probes)


def _project_problems(obj: Obj) -> Iterator[tuple[str, str]]:
    kind = obj.get("kind")
    if kind == "Secret":
        for key in ("data", "stringData"):
            if obj.get(key):
                yield key, "Secret values must not be committed: create the Secret with kubectl (see README)"
    if kind == "ConfigMap":
        for key, value in (obj.get("data") or {}).items():
            if value and _SECRET_NAME.search(key):
                yield f"data.{key}", "looks like a secret: keep it in a Secret, not a ConfigMap"
    if kind == "RayService" and "serveConfigV2" in obj.get("spec", {}):
        try:
            config = yaml.safe_load(obj["spec"]["serveConfigV2"])
        except yaml.YAMLError as err:
            yield "spec.serveConfigV2", f"not valid YAML: {str(err).splitlines()[0]}"
        else:
            if not isinstance(config, dict) or not isinstance(config.get("applications"), list):
                yield "spec.serveConfigV2", "must be a mapping with an applications list"
    yield from _container_problems(obj)


# -------------------------------------------------------------------------------------------------- API


def validate_objects(objects: list[Any], *, file: str = "<objects>") -> list[Problem]:
    """Every problem of every object; an empty list means all are valid."""
    problems: list[Problem] = []
    for index, obj in enumerate(objects):
        if not isinstance(obj, dict) or not obj.get("kind") or not obj.get("apiVersion"):
            problems.append(
                Problem(
                    file=file,
                    index=index,
                    kind="?",
                    name="?",
                    field="",
                    message="not a Kubernetes object (apiVersion and kind needed)",
                )
            )
            continue
        meta: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
        kind, name = str(obj["kind"]), str(meta.get("name", "?"))
        found = list(_schema_problems(copy.deepcopy(obj))) + list(_project_problems(obj))
        seen: set[tuple[str, str]] = set()
        for field, message in found:
            if (field, message) not in seen:
                seen.add((field, message))
                problems.append(
                    Problem(file=file, index=index, kind=kind, name=name, field=field, message=message)
                )
    return problems


def manifest_files(path: str | Path) -> list[Path]:
    """Every YAML file under ``path`` (a file or a folder), as ``kubectl apply -f`` would read them."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no YAML files (render first: worldloop infra render --out {root})")
    return files


def _documents(file: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]


def _identity(doc: Any) -> tuple[str, str, str, str] | None:
    """(apiVersion group, kind, namespace, name) of an object, as the API server keys it."""
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        return None
    meta = doc["metadata"]
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    return group, str(doc.get("kind")), str(meta.get("namespace", "")), str(meta.get("name"))


def validate_dir(path: str | Path) -> list[Problem]:
    """Validate every document of every manifest file under ``path`` (see :func:`manifest_files`), and
    that no object is defined twice (``kubectl apply -f`` would apply it twice, the last one winning)."""
    problems: list[Problem] = []
    first: dict[tuple[str, str, str, str], str] = {}
    for file in manifest_files(path):
        try:
            docs = _documents(file)
        except yaml.YAMLError as err:
            message = f"not valid YAML: {' '.join(str(err).split())}"
            problems.append(Problem(file=str(file), index=0, kind="?", name="?", field="", message=message))
            continue
        problems.extend(validate_objects(docs, file=str(file)))
        for index, doc in enumerate(docs):
            key = _identity(doc)
            if key is None:
                continue
            where = f"{file}#{index}"
            if key in first:
                message = f"defined again (first in {first[key]}): kubectl apply -f would apply it twice"
                problems.append(
                    Problem(file=str(file), index=index, kind=key[1], name=key[3], field="", message=message)
                )
            else:
                first[key] = where
    return problems


def count_documents(path: str | Path) -> int:
    """How many documents :func:`validate_dir` reads under ``path`` (files that do not parse count 0)."""
    total = 0
    for file in manifest_files(path):
        with contextlib.suppress(yaml.YAMLError):
            total += len(_documents(file))
    return total
