"""Model URIs are parsed once, into a typed value, with clear errors for what is not one."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from worldloop.platform.uri import ModelKind, ModelURI, ModelURIField


@pytest.mark.parametrize(
    ("text", "kind", "fields"),
    [
        ("preset:tiny", ModelKind.preset, {"preset": "tiny"}),
        ("models:/worldloop@champion", ModelKind.registry, {"name": "worldloop", "alias": "champion"}),
        ("models:/worldloop/12", ModelKind.registry, {"name": "worldloop", "version": 12}),
        ("/data/run/instruction", ModelKind.checkpoint, {"location": "/data/run/instruction"}),
        ("s3://bucket/run/long", ModelKind.checkpoint, {"location": "s3://bucket/run/long"}),
        ("file:///tmp/run", ModelKind.checkpoint, {"location": "file:///tmp/run"}),
    ],
)
def test_parse(text: str, kind: ModelKind, fields: dict[str, object]) -> None:
    uri = ModelURI.parse(text)
    assert uri.kind is kind and str(uri) == text
    for name, value in fields.items():
        assert getattr(uri, name) == value
    assert ModelURI.parse(uri) is uri  # parsing a parsed URI is free
    assert uri.is_remote is text.startswith("s3://")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("preset:huge", "unknown model preset 'huge'"),
        ("models:/worldloop", "models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:/worldloop/latest", "models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:worldloop@champion", "registry URIs look like"),
        ("models:/world loop@champion", "models:/NAME@ALIAS"),
        ("gs://bucket/run", "unsupported scheme 'gs'"),
    ],
)
def test_bad_uris_say_what_a_model_uri_is(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelURI.parse(text)


def test_registry_helpers() -> None:
    pinned = ModelURI.registry("worldloop", version=3)
    assert str(pinned) == "models:/worldloop/3" and pinned.ref == "3"
    assert ModelURI.parse("models:/worldloop@champion").ref == "champion"
    with pytest.raises(ValueError, match="not a registry URI"):
        _ = ModelURI.parse("preset:tiny").ref


def test_pydantic_field_validates_once_and_serialises_back_to_text() -> None:
    class Options(BaseModel):
        model: ModelURIField

    opts = Options.model_validate({"model": "models:/worldloop@champion"})
    assert opts.model.kind is ModelKind.registry
    assert opts.model_dump() == {"model": "models:/worldloop@champion"}
    assert Options.model_validate(opts.model_dump()).model == opts.model
    with pytest.raises(ValidationError, match="unknown model preset"):
        Options.model_validate({"model": "preset:nope"})
