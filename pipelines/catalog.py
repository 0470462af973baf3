"""The pipelines by name, their typed parameters, and compilation to reproducible IR YAML."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from kfp import compiler
from kfp.dsl.graph_component import GraphComponent

from worldloop.pipelines import curation, evaluation, full
from worldloop.pipelines.cluster import ClusterConfig

Builder = Callable[..., GraphComponent]
PIPELINES: dict[str, Builder] = {
    "full": full.build,
    "curation": curation.build,
    "evaluation": evaluation.build,
}
PARENT = "parent_run_id"  # set by the runner, not by the user
_TYPES: dict[str, type] = {"String": str, "Integer": int, "Float": float, "Boolean": bool}


def builder(name: str) -> Builder:
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    return PIPELINES[name]


def parameters(pipeline: GraphComponent) -> dict[str, tuple[type, object]]:
    """Parameter name → (Python type, default or ``...`` when required), in declaration order."""
    assert pipeline.component_spec.inputs is not None
    return {
        key: (_TYPES[str(spec.type)], spec.default if spec.optional else ...)
        for key, spec in pipeline.component_spec.inputs.items()
    }


def resolve_arguments(
    pipeline: GraphComponent, given: Mapping[str, str | int | float | bool]
) -> dict[str, object]:
    """Every parameter of ``pipeline`` with its value: ``given`` (strings are converted to the parameter's
    type) over the defaults. Unknown names and missing required values raise ValueError."""
    params = parameters(pipeline)
    unknown = sorted(set(given) - set(params) | ({PARENT} & set(given)))
    if unknown:
        names = ", ".join(k for k in params if k != PARENT)
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} of {pipeline.name}; it takes {names}")
    out: dict[str, object] = {}
    for key, (kind, default) in params.items():
        if key in given:
            out[key] = _convert(key, given[key], kind)
        elif default is not ...:
            out[key] = default
        elif key != PARENT:
            raise ValueError(f"{pipeline.name} needs --param {key}=VALUE")
    return out


def _convert(key: str, value: str | int | float | bool, kind: type) -> object:
    if not isinstance(value, str):
        return kind(value)
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"parameter {key}: {value!r} is not a boolean (true/false)")
        return value.lower() in ("true", "1")
    try:
        return kind(value)
    except ValueError as err:
        raise ValueError(f"parameter {key}: {value!r} is not {kind.__name__}") from err


def compile_pipeline(name: str, out: Path, *, cluster: ClusterConfig | None = None) -> Path:
    """Write ``name``'s IR YAML to ``out``: the same inputs give byte-identical files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(builder(name)(cluster), str(out))
    return out
