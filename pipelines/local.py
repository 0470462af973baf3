"""Local pipeline runs: ``kfp.local.SubprocessRunner(use_venv=False)`` with a fingerprint cache.

``kfp.local`` caches a task on its command, image and arguments. The arguments include the pipeline
run's MLflow parent run id, new on every run, so the key would never repeat. Local runs therefore key
each task on a fingerprint instead: the pipeline's arguments without the parent id, the settings that
decide where outputs go, and the code version (a hash of every source file of the ``worldloop``
package), plus what the input folders an argument names (``*_uri``, e.g. the user's ``source_uri``)
hold: their files' names, and for local folders their sizes and modification times. The DAG is
deterministic in these, so an unchanged re-run takes each finished step's
outputs from ``WORLDLOOP_HOME/kfp/cache`` and skips it; change an argument or any source file and the
steps run again. The registry step is never cached: every pipeline run registers its own version.

The steps are subprocesses of this interpreter and read their settings from the environment they
inherit (``WORLDLOOP_*``), as they do in a pod: pass ``settings`` that match it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from worldloop.pipelines.catalog import PARENT, builder, resolve_arguments
from worldloop.pipelines.cluster import ClusterConfig
from worldloop.platform import tracking
from worldloop.settings import Settings, get_settings

log = logging.getLogger(__name__)
PACKAGES = ("worldloop", "worldloop.model", "worldloop.components", "worldloop.pipelines")


def code_version() -> str:
    """SHA-256 over the paths and bytes of the package's Python sources (all four folders)."""
    import importlib

    digest = hashlib.sha256()
    for name in PACKAGES:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        root = Path(module.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def input_listing(uri: str, settings: Settings) -> list[object]:
    """What an input folder holds, as far as a cache key needs: names (and, locally, size and mtime)."""
    from worldloop import storage

    uris = storage.list_uris(uri, settings=settings)
    if storage.scheme_of(uri) is not storage.Scheme.local:
        return list(uris)
    stats = (storage.as_local_path(u).stat() for u in uris)
    return [[u, st.st_size, st.st_mtime_ns] for u, st in zip(uris, stats, strict=True)]


def fingerprint(name: str, arguments: dict[str, object], settings: Settings) -> str:
    """The cache key of a local run of pipeline ``name`` (see the module docstring)."""
    payload = {
        "pipeline": name,
        "arguments": {k: v for k, v in sorted(arguments.items()) if k != PARENT},
        "home": str(settings.home.resolve()),
        "storage": settings.resolved_storage_root,
        "mlflow": settings.resolved_mlflow_uri,
        "code": code_version(),
        "inputs": {
            k: input_listing(str(v), settings)
            for k, v in sorted(arguments.items())
            if k.endswith("_uri") and v
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class LocalRun:
    pipeline: str
    parent_run_id: str
    arguments: dict[str, object]
    outputs: dict[str, object]
    steps_run: int | None  # cacheable steps that executed; None: caching off
    steps_cached: int  # steps whose outputs came from the cache


def kfp_root(settings: Settings) -> Path:
    return (settings.home / "kfp").resolve()


def run_local(
    name: str,
    given: dict[str, str | int | float | bool],
    *,
    cache: bool = True,
    settings: Settings | None = None,
) -> LocalRun:
    """Run pipeline ``name`` here, each step a subprocess of this interpreter, under one MLflow parent run."""
    from kfp import local

    settings = settings or get_settings()
    arguments = resolve_arguments(builder(name)(), given)
    key = fingerprint(name, arguments, settings) if cache else None
    # kfp.local honours retry policies; locally a failed step is a bug to see now, not a lost node.
    pipeline = builder(name)(ClusterConfig(retries=0), cache_key=key)
    root = kfp_root(settings)
    cache_dir = root / "cache"
    local.init(
        local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "outputs"),
        enable_caching=cache,
        cache_root=str(cache_dir),
        raise_on_error=True,
    )
    started = time.time()
    parent = tracking.start_parent(name, arguments, settings=settings)
    arguments[PARENT] = parent
    log.info("pipeline %s: MLflow parent run %s, cache key %s", name, parent, key)
    try:
        with warnings.catch_warnings():
            # SubprocessRunner warns that the project image is not a Python image: locally no image
            # runs, this interpreter (with worldloop installed) does.
            warnings.filterwarnings("ignore", message="You may be attemp", category=RuntimeWarning)
            task = pipeline(**arguments)
    except Exception as err:
        tracking.finish_parent(parent, ok=False, settings=settings)
        raise RuntimeError(f"pipeline {name} failed (MLflow run {parent}): {err}") from err
    except BaseException:  # interrupted: the parent run is failed, the interrupt goes on
        tracking.finish_parent(parent, ok=False, settings=settings)
        raise
    steps_run = _written_since(cache_dir, started) if cache else None
    cacheable = sum(t.caching_options.enable_cache for t in pipeline.pipeline_spec.root.dag.tasks.values())
    tracking.finish_parent(parent, ok=True, tags={"worldloop.steps_run": str(steps_run)}, settings=settings)
    cached = 0 if steps_run is None else cacheable - steps_run
    return LocalRun(name, parent, arguments, dict(task.outputs), steps_run, cached)


def _written_since(cache_dir: Path, started: float) -> int:
    """Cache entries written since ``started``: the cacheable steps that executed."""
    return sum(p.stat().st_mtime >= started for p in cache_dir.glob("*.json"))
