"""Model URIs, parsed once (ARCHITECTURE.md): what ``--model`` and every ``model`` field name.

* ``preset:NAME`` — random weights of a preset (tests, the random-weight baseline);
* a checkpoint: a local folder (plain path or ``file://``) or ``s3://bucket/key`` — a training output
  (its latest checkpoint) or one ``step-…`` folder in it;
* ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` — a registered MLflow model version.

:class:`ModelURI` is a frozen value: parse it at the edge (CLI, serve arguments, pipeline parameters)
and pass it on typed. ``str(uri)`` gives back the text it was parsed from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from worldloop.model.config import PRESETS
from worldloop.storage import Scheme, scheme_of

REGISTRY_PREFIX = "models:/"
PRESET_PREFIX = "preset:"
EXAMPLES = "preset:tiny, a checkpoint folder, s3://bucket/run/stage, models:/worldloop@champion"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


class ModelKind(str, Enum):
    preset = "preset"
    checkpoint = "checkpoint"
    registry = "registry"


@dataclass(frozen=True)
class ModelURI:
    """A parsed model URI. Exactly the fields of its kind are set."""

    kind: ModelKind
    text: str
    preset: str | None = None  # kind preset
    location: str | None = None  # kind checkpoint: local path or s3:// URI
    name: str | None = None  # kind registry: the registered model
    alias: str | None = None  # kind registry: ``@ALIAS`` ...
    version: int | None = None  # ... or ``/VERSION``

    @classmethod
    def parse(cls, text: str | ModelURI) -> ModelURI:
        """Parse ``text``; raises ValueError saying what a model URI looks like."""
        if isinstance(text, ModelURI):
            return text
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"model URI is empty; give one of: {EXAMPLES}")
        text = text.strip()
        if text.startswith(PRESET_PREFIX):
            name = text.removeprefix(PRESET_PREFIX)
            if name not in PRESETS:
                raise ValueError(f"{text}: unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
            return cls(ModelKind.preset, text, preset=name)
        if text.startswith(REGISTRY_PREFIX):
            return cls._registry(text)
        if text.startswith("models:"):
            raise ValueError(f"{text}: registry URIs look like models:/NAME@ALIAS or models:/NAME/VERSION")
        try:
            scheme_of(text)
        except ValueError as err:
            raise ValueError(f"{text}: not a model URI ({err}); give one of: {EXAMPLES}") from None
        return cls(ModelKind.checkpoint, text, location=text)

    @classmethod
    def _registry(cls, text: str) -> ModelURI:
        rest = text.removeprefix(REGISTRY_PREFIX)
        name, sep, alias = rest.partition("@")
        version: int | None = None
        if not sep:
            name, sep, ref = rest.partition("/")
            version = int(ref) if sep and ref.isdigit() else None
            alias = ""
        if not name or not _NAME.match(name) or (not alias and version is None) or "/" in alias:
            raise ValueError(
                f"{text}: expected models:/NAME@ALIAS or models:/NAME/VERSION "
                "(e.g. models:/worldloop@champion)"
            )
        if alias and not _NAME.match(alias):
            raise ValueError(f"{text}: alias {alias!r} must be letters, digits, '.', '_' or '-'")
        return cls(ModelKind.registry, text, name=name, alias=alias or None, version=version)

    @classmethod
    def registry(cls, name: str, *, version: int) -> ModelURI:
        """``models:/NAME/VERSION`` (a pinned version)."""
        return cls.parse(f"{REGISTRY_PREFIX}{name}/{version}")

    @property
    def is_remote(self) -> bool:
        """A checkpoint in object storage (downloaded through the checkpoint mirror)."""
        return self.kind is ModelKind.checkpoint and scheme_of(self.location or "") is Scheme.s3

    @property
    def ref(self) -> str:
        """Registry URIs: the alias or the version number as text."""
        if self.kind is not ModelKind.registry:
            raise ValueError(f"{self.text} is not a registry URI")
        return self.alias if self.alias is not None else str(self.version)

    def __str__(self) -> str:
        return self.text


def _coerce(value: Any) -> ModelURI:
    return ModelURI.parse(value)


# A pydantic field type: validated from text once, serialised back to the same text.
ModelURIField = Annotated[ModelURI, BeforeValidator(_coerce), PlainSerializer(str, return_type=str)]
