"""KServe v2 / Open Inference Protocol (OIP) over HTTP/REST as a FastAPI router, with Triton's binary
tensor data extension; the tensor codec and message shapes are in :mod:`.oip_codec` (re-exported here).

    app = FastAPI()
    app.include_router(oip_router({"world": my_model}))

No ``from __future__ import annotations``: Ray Serve ships the router's endpoint closures to replicas
by value (cloudpickle keeps only the globals their code uses), so FastAPI must see real annotation
objects (``Request``), not names to look up.
"""

import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from worldloop.serving.oip_codec import (
    DATATYPES,
    DEFAULT_MAX_BODY_BYTES,
    HEADER_LENGTH,
    TRITON_CONFIG_TYPES,
    ErrorBody,
    InferRequest,
    InferRequestBody,
    InferResponseBody,
    ModelMetadataResponse,
    NotUtf8Error,
    OipError,
    RequestedOutput,
    ServerMetadataResponse,
    TensorMetadata,
    deserialize_bytes,
    encode_infer_response,
    numpy_dtype,
    oip_datatype,
    parse_infer_request,
    serialize_bytes,
    tensor_to_binary,
    tensor_to_json_data,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Models and the router
# --------------------------------------------------------------------------------------------------


class OipModel(Protocol):
    """What :func:`oip_router` serves. ``version`` may be ``""`` (unversioned); ``platform`` is free text
    (e.g. ``"pytorch"``); ``inputs``/``outputs`` describe the tensors with ``-1`` for variable dims.
    Plain attributes satisfy the read-only properties below."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def platform(self) -> str: ...

    @property
    def inputs(self) -> Sequence[TensorMetadata]: ...

    @property
    def outputs(self) -> Sequence[TensorMetadata]: ...

    def ready(self) -> bool:
        """Whether :meth:`infer` can serve requests now."""
        ...

    async def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the model. ``inputs`` have been checked against the declared inputs' datatype and shape
        (missing inputs are the model's to reject); raise ``OipError(400, ...)`` for bad requests.
        Return every output (the router picks the requested ones)."""
        ...


ModelSource = Callable[[], Mapping[str, OipModel]] | Mapping[str, OipModel]


def _package_version() -> str:
    try:
        return metadata.version("worldloop")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message).model_dump(), status_code=status)


OIP_STATUS = {
    400: "Malformed request, or tensors that do not match the model's metadata.",
    404: "Unknown model or version.",
    413: "Request body (after decompression) over the limit.",
    415: "Unsupported Content-Encoding (gzip, deflate or identity).",
    500: "The model failed on the request.",
    503: "The model is not ready.",
}


def oip_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for these statuses, each with the OIP error object."""
    return {status: {"model": ErrorBody, "description": OIP_STATUS[status]} for status in statuses}


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined (for an ``openapi_extra`` request body)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return dict(resolve(schema))


_BINARY = {"schema": {"type": "string", "format": "binary"}}
# From a model's metadata to its versioned routes (the first version it lists).
_VERSION_LINKS = {
    f"{name}Version": {
        "operationId": f"{operation}_version",
        "parameters": {"name": "$response.body#/name", "model_version": "$response.body#/versions/0"},
    }
    for name, operation in (
        ("Metadata", "model_metadata"),
        ("Ready", "model_ready"),
        ("Config", "model_config"),
    )
}


def _infer_openapi() -> dict[str, Any]:
    """The request side of ``infer`` in OpenAPI: the JSON request, or Triton's binary extension (the
    JSON header, ``Inference-Header-Content-Length`` bytes long, then the tensors' raw bytes)."""
    request = _inline(InferRequestBody)
    request["properties"]["inputs"]["items"]["properties"]["datatype"]["enum"] = list(DATATYPES)
    return {
        "parameters": [
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "description": "Length of the JSON header of a binary request (Triton binary extension).",
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request}, "application/octet-stream": _BINARY},
        },
    }


def check_inputs(model: OipModel, inputs: Mapping[str, np.ndarray]) -> None:
    """Reject (``OipError`` 400) inputs the model does not declare, or whose datatype or shape disagrees
    with its metadata (``-1`` matches any size). Missing inputs are left to the model."""
    declared = {spec.name: spec for spec in model.inputs}
    for name, array in inputs.items():
        spec = declared.get(name)
        if spec is None:
            raise OipError(
                400, f"model '{model.name}' has no input '{name}' (inputs: {', '.join(declared) or 'none'})"
            )
        datatype = oip_datatype(array.dtype)
        if datatype != spec.datatype:
            raise OipError(400, f"input '{name}': datatype {datatype}, model expects {spec.datatype}")
        shape = list(array.shape)
        if len(shape) != len(spec.shape) or any(
            want != -1 and want != got for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise OipError(400, f"input '{name}': shape {shape} does not match the model's {spec.shape}")


def oip_router(
    models: ModelSource,
    *,
    server_name: str = "worldloop",
    server_version: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> APIRouter:
    """A FastAPI router serving the OIP REST endpoints for ``models`` (name -> model).

    ``models`` may be a mapping or a zero-argument callable returning one, called on every request (a
    registry that loads and unloads models). Mount with ``app.include_router(oip_router(...))``; the
    paths start with ``/v2``. Requests over ``max_body_bytes`` (declared or actual, after
    ``Content-Encoding: gzip|deflate`` decompression) get 413.

    Status codes: 200; 400 malformed request or ``OipError`` from the model; 404 unknown model or
    version; 413 body too large; 415 unsupported Content-Encoding; 503 inference on an unready model;
    500 only for a model's own failure. Health/ready endpoints answer 200 (true) or 400 (false) with an
    empty body, as the OIP specifies ("4xx indicates false"); unknown models give 404.
    """
    version = server_version if server_version is not None else _package_version()
    router = APIRouter(tags=["open-inference-protocol"])

    def registry() -> Mapping[str, OipModel]:
        return models() if callable(models) else models

    def lookup(name: str, model_version: str | None) -> OipModel:
        model = registry().get(name)
        if model is None:
            raise OipError(404, f"unknown model '{name}'")
        if model_version is not None and model_version != model.version:
            raise OipError(404, f"model '{name}' has no version '{model_version}'")
        return model

    def is_ready(model: OipModel) -> bool:
        try:
            return bool(model.ready())
        except Exception:
            logger.exception("ready() of model %r raised", model.name)
            return False

    def health(ok: bool) -> Response:
        return Response(status_code=200 if ok else 400)

    @router.get("/v2", operation_id="server_metadata", response_model=ServerMetadataResponse)
    async def server_metadata() -> Response:
        body = ServerMetadataResponse(name=server_name, version=version, extensions=["binary_tensor_data"])
        return JSONResponse(body.model_dump())

    @router.get(
        "/v2/health/live",
        operation_id="server_live",
        response_class=Response,
        responses={200: {"description": "The server is live (empty body)."}},
    )
    async def server_live() -> Response:
        return health(True)

    @router.get(
        "/v2/health/ready",
        operation_id="server_ready",
        response_class=Response,
        responses={
            200: {"description": "Every model is ready (empty body)."},
            400: {"description": "Some model is not ready (empty body)."},
        },
    )
    async def server_ready() -> Response:
        return health(all(is_ready(model) for model in registry().values()))

    async def model_ready(name: str, model_version: str | None) -> Response:
        try:
            model = lookup(name, model_version)
        except OipError as exc:
            return _error(exc.status, exc.message)
        return health(is_ready(model))

    async def model_metadata(name: str, model_version: str | None) -> Response:
        try:
            model = lookup(name, model_version)
        except OipError as exc:
            return _error(exc.status, exc.message)
        body = ModelMetadataResponse(
            name=model.name,
            versions=[model.version] if model.version else [],
            platform=model.platform,
            inputs=list(model.inputs),
            outputs=list(model.outputs),
        )
        return JSONResponse(body.model_dump())

    async def model_config(name: str, model_version: str | None) -> Response:
        try:
            model = lookup(name, model_version)
        except OipError as exc:
            return _error(exc.status, exc.message)

        def tensors(specs: Sequence[TensorMetadata]) -> list[dict[str, Any]]:
            return [
                {
                    "name": s.name,
                    "data_type": TRITON_CONFIG_TYPES.get(s.datatype, s.datatype),
                    "dims": s.shape,
                }
                for s in specs
            ]

        return JSONResponse(
            {
                "name": model.name,
                "platform": model.platform,
                "max_batch_size": 0,
                "input": tensors(model.inputs),
                "output": tensors(model.outputs),
            }
        )

    async def infer(request: Request, name: str, model_version: str | None) -> Response:
        try:
            model = lookup(name, model_version)
            if not is_ready(model):
                raise OipError(503, f"model '{model.name}' is not ready")
            body = await _read_body(request, max_body_bytes)
            header = request.headers.get(HEADER_LENGTH)
            header_length: int | None = None
            if header is not None:
                try:
                    header_length = int(header)
                except ValueError:
                    raise OipError(400, f"{HEADER_LENGTH} must be an integer, got {header!r}") from None
            parsed = parse_infer_request(body, header_length)
            check_inputs(model, parsed.inputs)
            declared = [spec.name for spec in model.outputs]
            if parsed.outputs is not None:
                unknown = [out.name for out in parsed.outputs if out.name not in declared]
                if unknown:
                    raise OipError(
                        400,
                        f"model '{model.name}' has no output '{unknown[0]}' "
                        f"(outputs: {', '.join(declared) or 'none'})",
                    )
            parameters = {k: v for k, v in parsed.parameters.items() if k != "binary_data_output"}
            result = await model.infer(parsed.inputs, parameters)
        except OipError as exc:
            return _error(exc.status, exc.message)
        except Exception as exc:
            logger.exception("inference of model %r failed", name)
            return _error(500, f"model '{name}' failed: {type(exc).__name__}: {exc}")

        try:
            if parsed.outputs is None:
                selected = dict(result)
            else:
                missing = [out.name for out in parsed.outputs if out.name not in result]
                if missing:
                    raise ValueError(f"did not produce requested output '{missing[0]}'")
                selected = {out.name: result[out.name] for out in parsed.outputs}
            content, headers = encode_infer_response(
                model.name,
                model.version,
                parsed.id,
                selected,
                binary=parsed.binary_outputs(selected),
            )
        except NotUtf8Error as exc:
            return _error(400, f"model '{name}': {exc}")
        except Exception as exc:
            logger.exception("model %r returned outputs that cannot be encoded", name)
            return _error(500, f"model '{name}' returned bad outputs: {exc}")
        media_type = headers.pop("Content-Type")
        return Response(content=content, headers=headers, media_type=media_type)

    documented: dict[str, dict[str, Any]] = {
        "model_metadata": {
            "response_model": ModelMetadataResponse,
            "responses": {200: {"links": _VERSION_LINKS}, **oip_errors(404)},
        },
        "model_ready": {
            "response_class": Response,
            "responses": {
                200: {"description": "The model is ready (empty body)."},
                400: {"description": "The model is not ready (empty body)."},
                **oip_errors(404),
            },
        },
        "model_config": {"responses": {200: {"model": TritonModelConfig}, **oip_errors(404)}},
    }
    base, versioned = "/v2/models/{name}", "/v2/models/{name}/versions/{model_version}"
    for suffix, handler in (("", model_metadata), ("/ready", model_ready), ("/config", model_config)):
        docs = documented[handler.__name__]
        router.add_api_route(
            base + suffix, _unversioned(handler), methods=["GET"], operation_id=handler.__name__, **docs
        )
        router.add_api_route(
            versioned + suffix,
            _versioned(handler),
            methods=["GET"],
            operation_id=f"{handler.__name__}_version",
            **docs,
        )
    infer_docs: dict[str, Any] = {
        "openapi_extra": _infer_openapi(),
        "responses": {
            200: {
                "model": InferResponseBody,
                "description": "The outputs: JSON, or with binary outputs the JSON header then their bytes.",
                "content": {"application/octet-stream": _BINARY},
                "headers": {
                    HEADER_LENGTH: {
                        "description": "Length of the JSON header when binary outputs follow it.",
                        "schema": {"type": "integer"},
                    }
                },
            },
            **oip_errors(400, 404, 413, 415, 500, 503),
        },
    }
    router.add_api_route(
        f"{base}/infer", _unversioned_infer(infer), methods=["POST"], operation_id="infer", **infer_docs
    )
    router.add_api_route(
        f"{versioned}/infer",
        _versioned_infer(infer),
        methods=["POST"],
        operation_id="infer_version",
        **infer_docs,
    )
    return router


class TritonTensorConfig(BaseModel):
    name: str
    data_type: str
    dims: list[int]


class TritonModelConfig(BaseModel):
    """``GET .../config``: the model as Triton's model configuration describes it (its extension)."""

    name: str
    platform: str
    max_batch_size: int
    input: list[TritonTensorConfig]
    output: list[TritonTensorConfig]


# FastAPI reads path parameters from the endpoint's signature, so each route shape gets its own wrapper.
def _unversioned(handler: Callable[[str, str | None], Awaitable[Response]]) -> Callable[..., Any]:
    async def endpoint(name: str) -> Response:
        return await handler(name, None)

    return endpoint


def _versioned(handler: Callable[[str, str | None], Awaitable[Response]]) -> Callable[..., Any]:
    async def endpoint(name: str, model_version: str) -> Response:
        return await handler(name, model_version)

    return endpoint


def _unversioned_infer(
    handler: Callable[[Request, str, str | None], Awaitable[Response]],
) -> Callable[..., Any]:
    async def endpoint(request: Request, name: str) -> Response:
        return await handler(request, name, None)

    return endpoint


def _versioned_infer(
    handler: Callable[[Request, str, str | None], Awaitable[Response]],
) -> Callable[..., Any]:
    async def endpoint(request: Request, name: str, model_version: str) -> Response:
        return await handler(request, name, model_version)

    return endpoint


_DECODERS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "deflate": lambda: zlib.decompressobj(zlib.MAX_WBITS),
}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes after decoding (413 beyond; checked from Content-Length
    before reading, while streaming, and while decompressing)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OipError(413, f"request body of {int(declared)} bytes exceeds the limit of {limit}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", *_DECODERS):
        raise OipError(415, f"unsupported Content-Encoding {encoding!r} (gzip, deflate or identity)")
    decoder = _DECODERS[encoding]() if encoding in _DECODERS else None
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, limit + 1 - total)
            except zlib.error as exc:
                raise OipError(400, f"request body is not valid {encoding}: {exc}") from None
            if decoder.unconsumed_tail:
                raise OipError(413, f"decompressed request body exceeds the limit of {limit} bytes")
        total += len(chunk)
        if total > limit:
            raise OipError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    if decoder is not None and not decoder.eof:
        raise OipError(400, f"request body is truncated {encoding} data")
    return b"".join(chunks)


__all__ = [
    "DATATYPES",
    "DEFAULT_MAX_BODY_BYTES",
    "HEADER_LENGTH",
    "InferRequest",
    "InferRequestBody",
    "InferResponseBody",
    "ModelMetadataResponse",
    "NotUtf8Error",
    "OipError",
    "OipModel",
    "RequestedOutput",
    "ServerMetadataResponse",
    "TensorMetadata",
    "check_inputs",
    "deserialize_bytes",
    "encode_infer_response",
    "numpy_dtype",
    "oip_datatype",
    "oip_router",
    "parse_infer_request",
    "serialize_bytes",
    "tensor_to_binary",
    "tensor_to_json_data",
]
