"""YAML load/save for pydantic configs, with errors that name the file and the field.

Configs (model presets, training stages, pipeline parameters) are pydantic models; a YAML file is a
plain mapping of their fields. Saving is atomic (temp file + rename) so a crash never leaves half a
config behind, and loading validates strictly (``extra="forbid"`` models reject unknown keys).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(ValueError):
    """A config file could not be read or does not validate; the message names file and fields."""


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def validate_config(cls: type[ConfigT], data: object, *, source: str) -> ConfigT:
    """Validate ``data`` as ``cls``; on failure raise :class:`ConfigError` listing dotted field paths."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid {cls.__name__}:\n{_describe(exc)}") from None


def dump_yaml(config: BaseModel) -> str:
    """The config as YAML text (JSON-compatible values: tuples become lists, enums their values)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_yaml(config: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` to ``path`` atomically and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dump_yaml(config))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_yaml(cls: type[ConfigT], path: str | os.PathLike[str]) -> ConfigT:
    """Read ``path`` and validate it as ``cls``.

    Raises:
        ConfigError: the file is missing, is not YAML, is not a mapping, or a field is invalid
            (the message lists each offending field as a dotted path, e.g. ``causal.window_blocks``).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    return validate_config(cls, data, source=str(source))
