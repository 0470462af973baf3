"""The OpenAPI contract of the serving app: every answer a client can get is in ``/openapi.json``.

Routes declare their own error statuses with :func:`api_errors` (session API) or
:func:`worldloop.serving.oip.oip_errors` (KServe v2); :class:`ContractApp` completes the document with
what depends on the deployment or applies to every route:

* FastAPI's automatic ``422`` entries go: request validation answers ``400`` here (see
  :mod:`.middleware`), and the routes that validate declare it.
* With API keys on, every operation that checks them gets the three security schemes (``Authorization:
  Bearer``, ``X-API-Key``, ``?api_key=``) and a ``401`` response; the KServe v2 health probes and server
  metadata stay open (Kubernetes probes them). With keys off the document says neither, as the server
  asks for neither.

Two error shapes, one per protocol: the session API's ``{"error": {"status", "message", "field"?}}``
and the Open Inference Protocol's ``{"error": "message"}`` (what KServe v2 clients such as
``tritonclient`` parse) for everything under ``/v2``.

No ``from __future__ import annotations`` here: Serve ships the app by value to the ingress replica.
"""

import copy
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from worldloop.serving.oip_codec import ErrorBody as OipErrorBody

# The statuses routes answer, with what each means to a client.
DESCRIPTIONS = {
    400: "Malformed request: bad JSON, a field out of range, an image that does not decode.",
    401: "Missing or wrong API key (when the server has keys).",
    404: "No such session (or not this key's), model or version.",
    413: "Request body over the server's limit (8 MiB by default).",
    415: "Unsupported Content-Encoding (gzip, deflate or identity).",
    429: "Session limits reached: this key's or the server's. Close a session or retry later.",
    500: "The model failed on a valid request.",
    503: "The generator is unavailable (restarting or not ready); retrying resumes.",
}

# Operations that never check a key: the KServe v2 probes and server metadata.
OPEN_PATHS = ("/v2", "/v2/health/live", "/v2/health/ready")

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
}


class ApiErrorDetail(BaseModel):
    status: int = Field(..., ge=400, le=599, description="The HTTP status, repeated.")
    message: str = Field(..., description="What was wrong, in one line.")
    field: str | None = Field(None, description="The request field it is about, when it is about one.")


class ApiErrorBody(BaseModel):
    """Every error of the session API."""

    error: ApiErrorDetail


def api_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for these session-API error statuses."""
    return {status: {"model": ApiErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def complete(document: dict[str, Any], *, keys: bool) -> dict[str, Any]:
    """``document`` (FastAPI's) without the 422s, with security and 401s when ``keys`` are on."""
    doc = copy.deepcopy(document)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, model in (("ApiErrorBody", ApiErrorBody), ("ErrorBody", OipErrorBody)):
        if name not in schemas:  # a route that declares none would leave it out
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if keys and path not in OPEN_PATHS:
                body = "ErrorBody" if is_oip_path(path) else "ApiErrorBody"
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
                responses.setdefault(
                    "401",
                    {
                        "description": DESCRIPTIONS[401],
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
                    },
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if keys:
        components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    return doc


class ContractApp(FastAPI):
    """A FastAPI app whose ``/openapi.json`` is completed by :func:`complete` for the deployment: the
    ingress that serves it (``state.ingress``, see :mod:`.middleware`) says whether keys are on."""

    def openapi(self) -> dict[str, Any]:
        base = super().openapi()
        ingress = getattr(self.state, "ingress", None)
        keys = bool(ingress is not None and ingress.keys.enabled)
        cache: dict[bool, dict[str, Any]] = self.__dict__.setdefault("_contract_documents", {})
        if keys not in cache:
            cache[keys] = complete(base, keys=keys)
        return cache[keys]
