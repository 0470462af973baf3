"""Render the kustomize overlays in ``infra/k8s`` in pure Python, then apply settings-derived options.

Why not shell out to ``kubectl kustomize``: CI and the CLI must render without a Kubernetes toolchain.
This module implements the kustomize v5 subset the manifests use, with kustomize's semantics:

- ``resources``: YAML files (several documents each) and directories holding a ``kustomization.yaml``
  (rendered first, recursively);
- transformers, in kustomize's order: ``patches`` (strategic merge or JSON6902, with ``target``
  selecting by group/version/kind/name/namespace, names and kinds as anchored regular expressions),
  ``namespace``, ``labels`` (``pairs``, ``includeTemplates``; ``includeSelectors: true`` is refused),
  ``replicas``, ``images`` (every ``containers``/``initContainers`` image, custom resources included).

Strategic merge follows the Kubernetes patch strategy of the fields we patch: lists of containers,
env, volumes and ports merge by their key (``name``, ``mountPath``, ``containerPort``/``port``) in
built-in kinds; in custom resources (no schema) lists are replaced, as kustomize does. Anything
outside the subset raises ``ValueError`` naming the key, never a silent difference; a test compares
the output with ``kubectl kustomize`` when kubectl is installed.

:class:`RenderOptions` are applied *after* the kustomize layers and override them: image registry and
tag of the worldloop images, and the RayService's serving shape (sequence-parallel degree, GPUs per
worker pod, worker replicas, model URI, FP8), written consistently into ``serveConfigV2`` args and the
GPU worker group. Unset options leave the overlay's values.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = REPO_ROOT / "infra" / "k8s" / "overlays"
WORLDLOOP_IMAGES = ("worldloop", "worldloop-serving")  # last path segment of the project's images
SERVE_APP = "worldloop"  # the serveConfigV2 application and the RayService name

Obj = dict[str, Any]

_SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "namespace",
    "labels",
    "images",
    "replicas",
    "patches",
}
# kustomize's legacy output order (api/resid/gvk.go): these kinds first, in this order; then the rest by
# group/version/kind; webhooks last. Within a kind: by namespace, then name.
_ORDER_FIRST = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
_ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
# Strategic-merge keys of the list fields in built-in kinds (k8s patchMergeKey); other lists are replaced.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeClaimTemplates": None,  # replaced (no merge key)
}
_WORKLOADS_WITH_TEMPLATE = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
_REPLICA_KINDS = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}


class RenderOptions(BaseModel):
    """Settings-derived values applied after the kustomize layers (each overrides the overlay when set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_registry: str | None = Field(
        None, description="Registry/prefix of the worldloop images (e.g. registry.example.com/ml)."
    )
    image_tag: str | None = Field(None, description="Tag of the component and serving images.")
    sp: int | None = Field(None, ge=1, le=64, description="Sequence-parallel degree of a generator replica.")
    gpus_per_worker: int | None = Field(
        None, ge=1, description="nvidia.com/gpu per Ray worker pod (default: the SP degree)."
    )
    worker_replicas_min: int | None = Field(None, ge=0, description="Fewest GPU worker pods.")
    worker_replicas_max: int | None = Field(None, ge=1, description="Most GPU worker pods (autoscaling).")
    model_uri: str | None = Field(
        None, description="Model the service loads, e.g. models:/worldloop@champion."
    )
    fp8: bool | None = Field(None, description="FP8 weights in the generator.")

    @model_validator(mode="after")
    def _consistent(self) -> RenderOptions:
        if self.image_tag is not None and not re.fullmatch(r"[\w][\w.-]{0,127}", self.image_tag):
            raise ValueError(f"image tag {self.image_tag!r} is not a valid Docker tag")
        if self.image_registry is not None and (
            not self.image_registry.strip("/") or any(c in self.image_registry for c in " :@")
        ):
            raise ValueError(f"image registry {self.image_registry!r}: expected HOST[/PATH] without a tag")
        lo, hi = self.worker_replicas_min, self.worker_replicas_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"worker replicas: min {lo} is above max {hi}")
        if self.sp is not None and self.gpus_per_worker is not None and self.gpus_per_worker < self.sp:
            raise ValueError(
                f"gpus per worker ({self.gpus_per_worker}) must be at least the SP degree ({self.sp}): "
                "a replica's sequence-parallel workers are packed on one pod"
            )
        return self


# ---------------------------------------------------------------------------------------------- loading


def overlay_path(overlay: str | Path) -> Path:
    """``dev``/``prod`` (a folder under ``infra/k8s/overlays``) or a path to a kustomization folder."""
    path = Path(overlay)
    if not path.is_dir() and re.fullmatch(r"[\w-]+", str(overlay)):
        path = OVERLAYS / str(overlay)
    if not (path / "kustomization.yaml").is_file():
        known = sorted(p.name for p in OVERLAYS.iterdir()) if OVERLAYS.is_dir() else []
        raise FileNotFoundError(f"overlay {overlay}: no kustomization.yaml in {path} (known: {known})")
    return path


def _load_docs(path: Path) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None


def _build(folder: Path) -> list[Obj]:
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8")) or {}
    unknown = sorted(set(kust) - _SUPPORTED_KEYS)
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml: {unknown} not supported by the worldloop renderer")
    objects: list[Obj] = []
    for entry in kust.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            objects.extend(_build(path))
        elif path.is_file():
            for i, doc in enumerate(_load_docs(path)):
                if not isinstance(doc, dict) or "kind" not in doc:
                    raise ValueError(f"{path}: document {i} is not a Kubernetes object")
                objects.append(doc)
        else:
            raise FileNotFoundError(f"{folder}/kustomization.yaml: resource {entry} not found")
    for patch in kust.get("patches", []):
        _apply_patch(objects, patch, folder)
    if "namespace" in kust:
        _set_namespace(objects, kust["namespace"])
    for spec in kust.get("labels", []):
        _add_labels(objects, spec, folder)
    for spec in kust.get("replicas", []):
        for obj in objects:
            if obj["kind"] in _REPLICA_KINDS and obj["metadata"]["name"] == spec["name"]:
                obj.setdefault("spec", {})["replicas"] = int(spec["count"])
    for spec in kust.get("images", []):
        for container in iter_containers(objects):
            _retag(container, spec)
    return objects


# ---------------------------------------------------------------------------------------- transformers


def _set_namespace(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount" and not subject.get("namespace"):
                    subject["namespace"] = namespace


def _add_labels(objects: list[Obj], spec: dict[str, Any], folder: Path) -> None:
    if spec.get("includeSelectors"):
        raise ValueError(f"{folder}/kustomization.yaml: labels.includeSelectors true is not supported")
    pairs = {str(k): str(v) for k, v in spec.get("pairs", {}).items()}
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        if spec.get("includeTemplates") and obj["kind"] in _WORKLOADS_WITH_TEMPLATE:
            template = obj.setdefault("spec", {}).setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` → (name, tag, digest); a port in the registry host is not a tag."""
    name, _, digest = image.partition("@")
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _retag(container: dict[str, Any], spec: dict[str, Any]) -> None:
    if "image" not in container:
        return
    name, tag, digest = split_image(str(container["image"]))
    if name != spec["name"]:
        return
    name = spec.get("newName", name)
    if "digest" in spec:
        container["image"] = f"{name}@{spec['digest']}"
    elif "newTag" in spec:
        container["image"] = f"{name}:{spec['newTag']}"
    else:
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def iter_containers(objects: list[Obj]) -> Iterator[dict[str, Any]]:
    """Every container and init container anywhere in the objects (pods, templates, custom resources)."""

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    yield from (c for c in value if isinstance(c, dict))
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for obj in objects:
        yield from walk(obj)


# --------------------------------------------------------------------------------------------- patches


def _group_version(obj: Obj) -> tuple[str, str]:
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    return group, version


def _matches(obj: Obj, target: dict[str, Any]) -> bool:
    group, version = _group_version(obj)
    fields = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": obj["metadata"].get("name", ""),
        "namespace": obj["metadata"].get("namespace", ""),
    }
    for key, wanted in target.items():
        if key not in fields:
            raise ValueError(f"patch target key {key!r} not supported by the worldloop renderer")
        if not re.fullmatch(str(wanted), fields[key]):
            return False
    return True


def _apply_patch(objects: list[Obj], entry: dict[str, Any], folder: Path) -> None:
    if ("path" in entry) == ("patch" in entry):
        raise ValueError(f"{folder}/kustomization.yaml: a patch needs exactly one of path and patch")
    source = f"{folder}/{entry['path']}" if "path" in entry else f"{folder}/kustomization.yaml inline patch"
    text = (folder / entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    target = entry.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):  # JSON6902
        if target is None:
            raise ValueError(f"{source}: a JSON6902 patch needs a target")
        hits = [o for o in objects if _matches(o, target)]
        if not hits:
            raise ValueError(f"{source}: target {target} matches no object")
        for obj in hits:
            for op in docs[0]:
                _json6902(obj, op, source)
        return
    for patch in docs:
        if target is not None:
            hits = [o for o in objects if _matches(o, target)]
        else:
            want = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
            hits = [o for o in objects if _matches(o, want)]
        if not hits:
            raise ValueError(
                f"{source}: {patch.get('kind')}/{patch['metadata'].get('name')} matches no object"
            )
        for obj in hits:
            builtin = _is_builtin(obj)
            body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
            if target is not None:
                body["metadata"] = {k: v for k, v in body.get("metadata", {}).items() if k != "name"}
            _merge(obj, body, builtin)


def _is_builtin(obj: Obj) -> bool:
    group, _ = _group_version(obj)
    return group == "" or "." not in group or group.endswith(".k8s.io")


def _merge(base: dict[str, Any], patch: dict[str, Any], builtin: bool) -> None:
    """Strategic merge of ``patch`` into ``base`` (in place)."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise ValueError(f"strategic-merge directive {key} not supported by the worldloop renderer")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, builtin)
        elif isinstance(value, list) and isinstance(base.get(key), list) and builtin:
            base[key] = _merge_list(key, base[key], value, builtin)
        else:
            base[key] = copy.deepcopy(value)


def _merge_list(key: str, base: list[Any], patch: list[Any], builtin: bool) -> list[Any]:
    merge_key = _MERGE_KEYS.get(key)
    if key == "ports" and patch and isinstance(patch[0], dict):
        merge_key = "containerPort" if "containerPort" in patch[0] else "port"
    if merge_key is None or not all(isinstance(i, dict) and merge_key in i for i in patch):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for item in patch:
        match = next((b for b in out if isinstance(b, dict) and b.get(merge_key) == item[merge_key]), None)
        if match is None:
            out.append(copy.deepcopy(item))
        else:
            _merge(match, item, builtin)
    return out


def _pointer(path: str, source: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"{source}: JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(obj: Obj, op: dict[str, Any], source: str) -> None:
    kind, path = op.get("op"), str(op.get("path", ""))
    if kind not in ("add", "replace", "remove"):
        raise ValueError(f"{source}: JSON6902 op {kind!r} not supported (add, replace, remove)")
    *parents, last = _pointer(path, source)
    node: Any = obj
    for part in parents:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError):
            raise ValueError(
                f"{source}: path {path} not found in {obj['kind']}/{obj['metadata']['name']}"
            ) from None
    value = copy.deepcopy(op.get("value"))
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, value)
        elif index >= len(node):
            raise ValueError(f"{source}: path {path} not found in {obj['kind']}/{obj['metadata']['name']}")
        elif kind == "replace":
            node[index] = value
        else:
            del node[index]
    elif isinstance(node, dict):
        if kind != "add" and last not in node:
            raise ValueError(f"{source}: path {path} not found in {obj['kind']}/{obj['metadata']['name']}")
        if kind == "remove":
            del node[last]
        else:
            node[last] = value
    else:
        raise ValueError(f"{source}: path {path} does not lead into an object or a list")


# ---------------------------------------------------------------------------------------------- options


def _apply_options(objects: list[Obj], options: RenderOptions) -> None:
    if options.image_registry is not None or options.image_tag is not None:
        for container in iter_containers(objects):
            name, tag, digest = split_image(str(container.get("image", "")))
            repo = name.rsplit("/", 1)[-1]
            if repo not in WORLDLOOP_IMAGES:
                continue
            if options.image_registry is not None:
                name = f"{options.image_registry.rstrip('/')}/{repo}"
            if options.image_tag is not None:
                container["image"] = f"{name}:{options.image_tag}"
            else:
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    serving = ("sp", "gpus_per_worker", "worker_replicas_min", "worker_replicas_max", "model_uri", "fp8")
    if any(getattr(options, f) is not None for f in serving):
        services = [o for o in objects if o["kind"] == "RayService" and o["metadata"]["name"] == SERVE_APP]
        if not services:
            raise ValueError(f"serving options given but the overlay has no RayService {SERVE_APP}")
        for service in services:
            _apply_serving(service, options)


def _apply_serving(service: Obj, options: RenderOptions) -> None:
    spec = service["spec"]
    config = yaml.safe_load(spec["serveConfigV2"])
    apps = [a for a in config.get("applications", []) if a.get("name") == SERVE_APP]
    if not apps:
        raise ValueError(f"RayService {SERVE_APP}: serveConfigV2 has no application {SERVE_APP!r}")
    args = apps[0].setdefault("args", {})
    group = spec["rayClusterConfig"]["workerGroupSpecs"][0]
    if options.sp is not None:
        args["sp"] = options.sp
    if options.model_uri is not None:
        args["model"] = options.model_uri
    if options.fp8 is not None:
        args["fp8"] = options.fp8
    lo = options.worker_replicas_min if options.worker_replicas_min is not None else group["minReplicas"]
    hi = options.worker_replicas_max if options.worker_replicas_max is not None else group["maxReplicas"]
    if lo > hi:
        raise ValueError(f"worker replicas: min {lo} is above max {hi} (overlay and options combined)")
    group["minReplicas"], group["maxReplicas"] = lo, hi
    group["replicas"] = min(max(group.get("replicas", lo), lo), hi)
    args["replicas"], args["max_replicas"] = max(lo, 1), max(hi, 1)  # one generator replica per worker pod
    sp = int(args.get("sp", 1))
    gpus = options.gpus_per_worker if options.gpus_per_worker is not None else sp
    if gpus < sp:
        raise ValueError(f"gpus per worker ({gpus}) must be at least the SP degree ({sp})")
    for container in group["template"]["spec"]["containers"]:
        resources = container.setdefault("resources", {})
        for part in ("requests", "limits"):
            resources.setdefault(part, {})["nvidia.com/gpu"] = str(gpus)
    spec["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)


# ----------------------------------------------------------------------------------------------- public


def sort_key(obj: Obj) -> tuple[int, int, str, str, str]:
    """kubectl/kustomize order: Namespace, ServiceAccount, Role... first, webhooks last; then by name."""
    kind = obj["kind"]
    meta = obj.get("metadata", {})
    names = (meta.get("namespace", ""), meta.get("name", ""))
    if kind in _ORDER_FIRST:
        return (0, _ORDER_FIRST.index(kind), "", *names)
    if kind in _ORDER_LAST:
        return (2, _ORDER_LAST.index(kind), "", *names)
    group, version = _group_version(obj)
    return (1, 0, f"{group}_{version}_{kind}", *names)


def render(overlay: str | Path, options: RenderOptions | None = None) -> list[Obj]:
    """The overlay's objects (kustomize subset above), with ``options`` applied, in a deterministic order."""
    objects = _build(overlay_path(overlay))
    _apply_options(objects, options or RenderOptions())
    return sorted(objects, key=sort_key)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as ``|`` blocks, so rendered files read like sources."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(objects: list[Obj]) -> str:
    """The objects as one multi-document YAML text (keys in their rendered order)."""
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False)


def object_file_name(index: int, obj: Obj) -> str:
    return f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


SINGLE_FILE = "all.yaml"


def write_rendered(objects: list[Obj], out_dir: str | Path, *, single_file: bool = False) -> list[Path]:
    """One YAML file per object (``NN-kind-name.yaml``), or with ``single_file`` one ``all.yaml`` —
    never both, so ``kubectl apply -f out_dir`` applies each object once. Returns the files written.

    Earlier ``*.yaml`` files in ``out_dir`` are removed so the folder holds exactly this render.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        old.unlink()
    if single_file:
        path = out / SINGLE_FILE
        path.write_text(to_yaml(objects), encoding="utf-8")
        return [path]
    paths = []
    for i, obj in enumerate(objects):
        path = out / object_file_name(i, obj)
        path.write_text(to_yaml([obj]), encoding="utf-8")
        paths.append(path)
    return paths
