"""DESIGN.md §1: the model imports no platform services; arch/diffusion/distill stay single-device."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MODEL = Path(__file__).resolve().parents[2] / "model"


def test_model_package_imports_no_services() -> None:
    code = (
        "import sys, worldloop.model, worldloop.model.weights, worldloop.model.quant, worldloop.model.text\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'kfp', 'mlflow'})\n"
        "bad += sorted(m for m in sys.modules if m.startswith('worldloop.serving'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_single_device_folders_never_import_torch_distributed() -> None:
    files = [p for folder in ("arch", "diffusion", "distill") for p in (MODEL / folder).rglob("*.py")]
    assert files, "expected model/arch etc. to exist"
    offenders = [str(p) for p in files if any(n.startswith("torch.distributed") for n in _imports(p))]
    assert offenders == []
