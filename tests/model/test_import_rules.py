"""ARCHITECTURE.md: every import points down, and no two packages import each other.

Layers, top down: the CLI; pipelines and serving; components (pipeline steps); the platform layer
(``worldloop.platform``, ``worldloop.k8s``); the model; the foundation (settings, storage, video, config
files). Imports are read from the source with ``ast`` — lazy imports inside functions count too, since
that is how a cycle hides.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "model"
FOLDERS = {
    "worldloop": "worldloop",
    "model": "worldloop.model",
    "components": "worldloop.components",
    "pipelines": "worldloop.pipelines",
    "serving": "worldloop.serving",
}
# Packages grouped as one node of the package graph: a component or a model sub-package is its own
# node (components may use each other; model sub-packages too), the other layers one node each.
SPLIT = ("model", "components")
FOUNDATION = (
    "worldloop",
    "worldloop.settings",
    "worldloop.storage",
    "worldloop.data",
    "worldloop.video",
    "worldloop.config_io",
    "worldloop.controls",
)
LAYER_RANK = {
    "foundation": 0,
    "model": 1,
    "platform": 2,
    "components": 3,
    "pipelines": 4,
    "serving": 4,
    "cli": 5,
}
# Besides the rank order, what a layer may not import although it sits lower.
FORBIDDEN = {
    "serving": ("components", "pipelines"),  # serving loads models only through the platform layer
    "pipelines": ("serving", "model"),  # pipelines only wire components
}
THIRD_PARTY = {
    "model": ("ray", "kfp", "mlflow", "fastapi", "starlette", "kubernetes", "boto3", "httpx"),
    "platform": ("ray", "kfp", "fastapi", "starlette"),
    "foundation": ("torch", "ray", "kfp", "mlflow", "fastapi"),
    "components": ("fastapi", "starlette"),
}


def _module_name(folder: str, path: Path) -> tuple[str, bool]:
    rel = path.relative_to(ROOT / folder).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([FOLDERS[folder], *parts]), rel.name == "__init__"


@cache
def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name, is_package = _module_name(folder, path)
            found[name] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def _target(imported: str) -> str | None:
    """The worldloop module an import names (the longest existing prefix), or None if third-party."""
    modules = _modules()
    while imported not in modules and "." in imported:
        imported = imported.rsplit(".", 1)[0]
    return imported if imported in modules else None


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] in SPLIT:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def layer_of(module: str) -> str:
    if module in FOUNDATION or package_of(module) in FOUNDATION:
        return "foundation"
    layer = {"platform": "platform", "k8s": "platform"}.get(module.split(".")[1], module.split(".")[1])
    if layer not in LAYER_RANK:
        raise AssertionError(f"{module} belongs to no layer: place it in ARCHITECTURE.md and in this test")
    return layer


@cache
def _edges() -> dict[tuple[str, str], list[str]]:
    """(importing module, imported worldloop module) → nothing; third-party imports as ("", name)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for name, (path, is_package) in _modules().items():
        for imported in _imports(name, path, is_package):
            target = _target(imported) if imported.startswith("worldloop") else None
            key = (name, target) if target is not None else (name, "3rd:" + imported.split(".")[0])
            edges.setdefault(key, [])
    return edges


def breaks_layering(source: str, target: str) -> bool:
    """``source`` importing ``target`` points up, or to a layer ``source``'s layer may not use."""
    a, b = layer_of(source), layer_of(target)
    return b in FORBIDDEN.get(a, ()) or (a != b and LAYER_RANK[b] > LAYER_RANK[a])


def test_every_import_points_down() -> None:
    offenders = [
        f"{source} ({layer_of(source)}) imports {target} ({layer_of(target)})"
        for source, target in _edges()
        if not target.startswith("3rd:") and breaks_layering(source, target)
    ]
    assert offenders == [], "\n".join(sorted(offenders))


def test_layers_import_no_forbidden_services() -> None:
    offenders = []
    for source, target in _edges():
        if target.startswith("3rd:") and target[4:] in THIRD_PARTY.get(layer_of(source), ()):
            offenders.append(f"{source} imports {target[4:]}")
    assert offenders == [], "\n".join(sorted(offenders))


def test_no_cycles_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for source, target in _edges():
        if not target.startswith("3rd:") and package_of(source) != package_of(target):
            graph.setdefault(package_of(source), set()).add(package_of(target))
    # Tarjan's strongly connected components: any component of two or more packages is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize(
    ("source", "target", "breaks"),
    [
        ("worldloop.model.spec", "worldloop.platform.stack", True),
        ("worldloop.components.curation.component", "worldloop.pipelines.local", True),
        ("worldloop.serving.engine", "worldloop.components.evaluation.interbench", True),
        ("worldloop.platform.stack", "worldloop.components.registry.versions", True),
        ("worldloop.pipelines.full", "worldloop.model.config", True),
        ("worldloop.video", "worldloop.model.config", True),
        ("worldloop.pipelines.full", "worldloop.components.training.component", False),
        ("worldloop.serving.engine", "worldloop.platform.stack", False),
        ("worldloop.platform.stack", "worldloop.model.spec", False),
        ("worldloop.cli.serve", "worldloop.serving.app", False),
    ],
)
def test_the_layering_rule_itself(source: str, target: str, breaks: bool) -> None:
    """The rule is not vacuous: upward and forbidden imports are caught, downward ones pass."""
    assert breaks_layering(source, target) is breaks
    assert package_of("worldloop.components.curation.captioning.rules") == "worldloop.components.curation"
    assert _target("worldloop.model.arch.dit.DiT") == "worldloop.model.arch.dit"


def test_model_package_imports_no_services() -> None:
    code = (
        "import sys, worldloop.model, worldloop.model.weights, worldloop.model.quant, worldloop.model.text\n"
        "import worldloop.model.spec, worldloop.model.train.checkpoint\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'kfp', 'mlflow'})\n"
        "bad += sorted(m for m in sys.modules if m.startswith(('worldloop.serving', 'worldloop.components',"
        " 'worldloop.pipelines', 'worldloop.platform')))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_single_device_folders_never_import_torch_distributed() -> None:
    files = [p for folder in ("arch", "diffusion", "distill") for p in (MODEL / folder).rglob("*.py")]
    assert files, "expected model/arch etc. to exist"
    offenders = []
    for path in files:
        name, is_package = _module_name("model", path)
        if any(n.startswith("torch.distributed") for n in _imports(name, path, is_package)):
            offenders.append(str(path))
    assert offenders == []
