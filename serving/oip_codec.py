"""KServe v2 / Open Inference Protocol (OIP) tensors and messages: the codec behind :mod:`.oip`.

Numpy arrays <-> OIP JSON tensors and Triton binary parts, the request/response JSON shapes (pydantic)
and their validation; :mod:`worldloop.serving.oip` serves them as a FastAPI router. The binary
extension matters for worldloop because its tensors are images and video frames: JSON lists would
multiply their size by ~4 and cost seconds of encoding.

Wire format, as ``tritonclient.http`` 2.x sends and expects it with default settings:

* ``InferInput.set_data_from_numpy(arr)`` defaults to ``binary_data=True``: the input's JSON carries
  ``"parameters": {"binary_data_size": N}`` and no ``"data"``; its raw bytes follow the JSON header in
  input order, and the ``Inference-Header-Content-Length`` request header gives the JSON header's size.
  Without any binary input the header is omitted and the body is plain JSON.
* ``infer(..., outputs=None)`` sets the request parameter ``"binary_data_output": true`` (all outputs
  binary); ``InferRequestedOutput(name)`` defaults to ``"parameters": {"binary_data": true}`` per output
  and lists only the outputs the caller wants.
* A response with binary parts is the JSON header followed by the outputs' bytes in the order the
  JSON lists them, each output's JSON with ``"parameters": {"binary_data_size": N}``; the
  ``Inference-Header-Content-Length`` response header gives the JSON size.
* BYTES elements, in binary form, are a 4-byte little-endian length then the bytes; in JSON they are
  strings (UTF-8). Fixed-size types are little-endian, row-major.
* Health and readiness answer with the status code only (200 true, anything else false);
  errors are ``{"error": "..."}`` with a non-200 status.

Decoded tensors are numpy arrays; BYTES tensors are ``object`` arrays of ``bytes``. Arrays decoded from
binary parts are read-only views over the request body (copy before writing into them).
"""

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

try:  # optional: tritonclient depends on it, numpy has no bfloat16 of its own
    import ml_dtypes

    _BF16: np.dtype | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes ships with tritonclient
    _BF16 = None


HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header giving the size of the JSON part of a body that carries binary tensor data."""

DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
"""Default request body limit of :func:`oip_router` (after decompression)."""

_LENGTH_PREFIX = struct.Struct("<I")


class OipError(Exception):
    """A request the server cannot serve; ``status`` is the HTTP status to answer with (4xx for the
    client's mistakes). Models raise it from :meth:`OipModel.infer` for bad inputs."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------
# Datatypes
# --------------------------------------------------------------------------------------------------

_FIXED: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
if _BF16 is not None:
    _FIXED["BF16"] = _BF16

DATATYPES: tuple[str, ...] = (*_FIXED, "BYTES")
"""Every OIP datatype this module encodes and decodes."""

_BY_DTYPE: dict[np.dtype, str] = {dtype: name for name, dtype in _FIXED.items()}

# Triton model-config names (model_config.proto DataType) for GET .../config.
TRITON_CONFIG_TYPES = {name: f"TYPE_{name}" for name in _FIXED} | {"BYTES": "TYPE_STRING"}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype that holds an OIP ``datatype`` (``object`` for BYTES)."""
    if datatype == "BYTES":
        return np.dtype(object)
    try:
        return _FIXED[datatype]
    except KeyError:
        raise ValueError(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}") from None


def oip_datatype(dtype: np.dtype | type) -> str:
    """The OIP datatype for a numpy dtype: object / bytes / str arrays are BYTES; either byte order."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    found = _BY_DTYPE.get(dtype.newbyteorder("=")) if dtype.byteorder in "<>" else _BY_DTYPE.get(dtype)
    if found is None:
        raise ValueError(f"numpy dtype {dtype} has no OIP datatype")
    return found


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> binary form: each element (row-major) as 4-byte little-endian length + bytes.

    Elements may be ``bytes`` or ``str`` (encoded as UTF-8); anything else is an error.
    """
    parts: list[bytes] = []
    for item in np.asarray(array, dtype=object).ravel(order="C"):
        raw = _element_bytes(item)
        parts.append(_LENGTH_PREFIX.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, *, name: str = "tensor") -> np.ndarray:
    """Binary BYTES data -> flat ``object`` array of ``count`` ``bytes``; the buffer must hold exactly
    ``count`` length-prefixed elements (``OipError`` 400 naming ``name`` otherwise)."""
    view = memoryview(buffer)
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise OipError(400, f"input '{name}': BYTES data ends after {i} of {count} elements")
        (size,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise OipError(
                400,
                f"input '{name}': BYTES element {i} claims {size} bytes, only {len(view) - offset} remain",
            )
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise OipError(
            400, f"input '{name}': {len(view) - offset} bytes left over after {count} BYTES elements"
        )
    return out


def _element_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview, np.bytes_)):
        return bytes(item)
    raise TypeError(f"BYTES element must be bytes or str, got {type(item).__name__}")


_NATIVE_LITTLE = bool(np.little_endian)


def _little_endian(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not _NATIVE_LITTLE):
        return array.astype(array.dtype.newbyteorder("<"))
    return array


def tensor_to_binary(array: np.ndarray) -> bytes:
    """A tensor's binary-extension bytes: row-major little-endian, or length-prefixed for BYTES."""
    array = np.asarray(array)
    if oip_datatype(array.dtype) == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(_little_endian(array)).tobytes(order="C")


class NotUtf8Error(ValueError):
    """A BYTES element that JSON cannot carry (not UTF-8): the client must ask for binary data."""


def tensor_to_json_data(array: np.ndarray) -> list[Any]:
    """A tensor as the flat row-major JSON ``data`` list (BYTES as UTF-8 strings)."""
    array = np.asarray(array)
    datatype = oip_datatype(array.dtype)
    if datatype == "BYTES":
        out: list[Any] = []
        for item in array.ravel(order="C"):
            if isinstance(item, str):
                out.append(item)
                continue
            try:
                out.append(_element_bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                raise NotUtf8Error("BYTES element is not UTF-8; request this output as binary data") from None
        return out
    if datatype in ("FP16", "BF16"):
        return array.astype(np.float32).ravel(order="C").tolist()
    return array.ravel(order="C").tolist()


# --------------------------------------------------------------------------------------------------
# JSON shapes (pydantic)
# --------------------------------------------------------------------------------------------------

Parameters = dict[str, Any]


class TensorMetadata(BaseModel):
    """A model input or output as metadata describes it; ``-1`` in ``shape`` means any size."""

    model_config = ConfigDict(frozen=True)

    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    """One entry of the request's ``inputs``: either JSON ``data`` or a ``binary_data_size`` parameter."""

    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: Parameters | None = None
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: Parameters | None = None


class InferRequestBody(BaseModel):
    """The JSON part of an inference request."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    """The JSON part of an inference response."""

    # NaN / Infinity as JSON constants (what Triton sends and rapidjson reads), not null.
    model_config = ConfigDict(ser_json_inf_nan="constants")

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class ErrorBody(BaseModel):
    error: str


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client listed; ``binary`` whether it wants the data as a binary part."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request.

    ``outputs`` is ``None`` when the client listed none (then every output is returned, binary iff
    ``binary_data_output``). ``parameters`` are the request's parameters as sent.
    """

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_data_output: bool = False

    def binary_outputs(self, produced: Iterable[str]) -> set[str]:
        """The names among ``produced`` that the response must carry as binary parts."""
        if self.outputs is None:
            return set(produced) if self.binary_data_output else set()
        wanted = {out.name for out in self.outputs if out.binary}
        return {name for name in produced if name in wanted}


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON header + binary tensor data).

    ``header_length`` is the ``Inference-Header-Content-Length`` header (``None`` if absent: the whole
    body is JSON). Raises :class:`OipError` (400) with a message naming the offending input for any
    malformed request: bad JSON, unknown datatype, element count not matching the shape, binary sizes
    not adding up, header length outside the body, ...
    """
    if header_length is None:
        header_length = len(body)
    elif header_length < 0:
        raise OipError(400, f"{HEADER_LENGTH} must not be negative, got {header_length}")
    elif header_length > len(body):
        raise OipError(
            400, f"{HEADER_LENGTH} is {header_length} but the request body has only {len(body)} bytes"
        )
    raw = _load_json(bytes(memoryview(body)[:header_length]))
    request = _validate_request(raw)
    binary = memoryview(body)[header_length:]

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in inputs:
            raise OipError(400, f"input '{tensor.name}' appears more than once")
        array, used = _decode_input(tensor, binary, offset)
        inputs[tensor.name] = array
        offset += used
    if offset != len(binary):
        raise OipError(
            400,
            f"request has {len(binary)} bytes of binary data after the JSON header but its inputs' "
            f"binary_data_size add up to {offset}",
        )

    parameters = dict(request.parameters or {})
    binary_data_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_data_output, bool):
        raise OipError(400, f"parameter 'binary_data_output' must be a boolean, got {binary_data_output!r}")

    outputs: list[RequestedOutput] | None = None
    if request.outputs is not None:
        outputs = []
        seen: set[str] = set()
        for out in request.outputs:
            if out.name in seen:
                raise OipError(400, f"output '{out.name}' is requested more than once")
            seen.add(out.name)
            params = out.parameters or {}
            for unsupported in ("shared_memory_region", "classification"):
                if unsupported in params:
                    raise OipError(400, f"output '{out.name}': parameter '{unsupported}' is not supported")
            wants_binary = params.get("binary_data", binary_data_output)
            if not isinstance(wants_binary, bool):
                raise OipError(400, f"output '{out.name}': parameter 'binary_data' must be a boolean")
            outputs.append(RequestedOutput(out.name, wants_binary))

    return InferRequest(
        inputs=inputs,
        id=request.id,
        parameters=parameters,
        outputs=outputs,
        binary_data_output=binary_data_output,
    )


def _load_json(header: bytes) -> Any:
    try:
        return json.loads(header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OipError(400, f"request JSON is malformed: {exc}") from None
    except RecursionError:
        raise OipError(400, "request JSON is nested too deeply") from None


def _validate_request(raw: Any) -> InferRequestBody:
    if not isinstance(raw, dict):
        raise OipError(400, f"request JSON must be an object, got {type(raw).__name__}")
    try:
        return InferRequestBody.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = list(error["loc"])
        where = "request"
        if len(loc) >= 2 and loc[0] in ("inputs", "outputs") and isinstance(loc[1], int):
            kind = loc[0][:-1]
            entry = raw[loc[0]][loc[1]]
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"{kind} '{name}'" if isinstance(name, str) else f"{kind} #{loc[1]}"
            loc = loc[2:]
        field_path = ".".join(str(part) for part in loc)
        suffix = f" field '{field_path}'" if field_path else ""
        raise OipError(400, f"{where}{suffix}: {error['msg']}") from None


def _decode_input(tensor: RequestInput, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """Decode one input; returns the array and how many bytes of ``binary`` (from ``offset``) it used."""
    name = tensor.name
    if any(dim < 0 for dim in tensor.shape):
        raise OipError(400, f"input '{name}': shape {tensor.shape} has a negative dimension")
    try:
        dtype = numpy_dtype(tensor.datatype)
    except ValueError as exc:
        raise OipError(400, f"input '{name}': {exc}") from None
    count = math.prod(tensor.shape)
    params = tensor.parameters or {}
    if "shared_memory_region" in params:
        raise OipError(400, f"input '{name}': shared memory inputs are not supported")
    size = params.get("binary_data_size")

    if size is None:
        if tensor.data is None:
            raise OipError(400, f"input '{name}' has neither 'data' nor a 'binary_data_size' parameter")
        return _decode_json_data(name, tensor.datatype, dtype, tensor.data, tensor.shape, count), 0

    if tensor.data is not None:
        raise OipError(400, f"input '{name}' has both 'data' and a 'binary_data_size' parameter")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise OipError(400, f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}")
    if offset + size > len(binary):
        raise OipError(
            400,
            f"input '{name}': binary_data_size {size} exceeds the {len(binary) - offset} bytes of binary "
            "data left in the request body",
        )
    chunk = binary[offset : offset + size]
    if tensor.datatype == "BYTES":
        return deserialize_bytes(chunk, count, name=name).reshape(tensor.shape), size
    expected = count * dtype.itemsize
    if size != expected:
        raise OipError(
            400,
            f"input '{name}': binary_data_size is {size} bytes but shape {tensor.shape} of "
            f"{tensor.datatype} needs {expected}",
        )
    if tensor.datatype == "BOOL":
        array = np.frombuffer(chunk, dtype=np.uint8) != 0
    else:
        array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))
        if not _NATIVE_LITTLE:  # pragma: no cover - big-endian hosts
            array = array.astype(dtype)
    return array.reshape(tensor.shape), size


_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


def _decode_json_data(
    name: str, datatype: str, dtype: np.dtype, data: Any, shape: list[int], count: int
) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(name, data)
        if len(flat) != count:
            raise OipError(400, f"input '{name}': shape {shape} needs {count} elements, got {len(flat)}")
        out = np.empty(count, dtype=object)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise OipError(
                    400, f"input '{name}': BYTES element {i} must be a string, got {type(item).__name__}"
                )
            out[i] = item.encode("utf-8")
        return out.reshape(shape)

    try:
        loose = np.asarray(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise OipError(400, f"input '{name}': data is not a regular (rectangular) list: {exc}") from None
    if loose.size != count:
        raise OipError(400, f"input '{name}': shape {shape} needs {count} elements, got {loose.size}")
    if count and dtype.kind in "iu" and loose.dtype.kind in "fO":
        # numpy turns ints beyond int64 mixed with others into float64 (lossy) or object: check them exactly
        loose = _exact_integers(name, datatype, data, count)
    elif count and loose.dtype.kind not in _JSON_KINDS[dtype.kind if datatype != "BF16" else "f"]:
        raise OipError(
            400, f"input '{name}': {datatype} data must be {_KIND_WORDS[dtype.kind]}, got {_describe(loose)}"
        )
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        low, high = int(loose.min()), int(loose.max())  # python ints for object arrays: exact
        if low < info.min or high > info.max:
            raise OipError(
                400, f"input '{name}': values [{low}, {high}] do not fit {datatype} [{info.min}, {info.max}]"
            )
    return loose.astype(dtype).reshape(shape)


def _exact_integers(name: str, datatype: str, data: list[Any], count: int) -> np.ndarray:
    flat = _flatten(name, data)
    if len(flat) != count or not all(type(v) is int for v in flat):
        bad = next((v for v in flat if type(v) is not int), None)
        raise OipError(400, f"input '{name}': {datatype} data must be integers, got {bad!r}")
    out = np.empty(count, dtype=object)
    out[:] = flat
    return out


_KIND_WORDS = {"b": "booleans", "u": "integers", "i": "integers", "f": "numbers", "V": "numbers"}


def _describe(array: np.ndarray) -> str:
    return {"U": "strings", "S": "strings", "O": "mixed or out-of-range values", "b": "booleans"}.get(
        array.dtype.kind, f"{array.dtype} values"
    )


def _flatten(name: str, data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
        if len(stack) > 64:
            raise OipError(400, f"input '{name}': data is nested too deeply")
    return flat


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def encode_infer_response(
    model_name: str,
    model_version: str | None,
    id: str | None,
    outputs: Mapping[str, np.ndarray],
    *,
    binary: set[str] | bool,
    parameters: Parameters | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference response; returns the body and the headers to send with it.

    ``binary`` is ``True`` (every output binary), ``False`` (pure JSON) or the names of the outputs to
    send as binary parts. With any binary part the body is the JSON header followed by the parts in
    ``outputs`` order, and the headers carry ``Inference-Header-Content-Length`` and
    ``Content-Type: application/octet-stream``; otherwise ``application/json``. Raises ``ValueError``
    for an array with no OIP datatype or a non-UTF-8 BYTES element in a JSON output.
    """
    entries: list[ResponseOutput] = []
    parts: list[bytes] = []
    for name, value in outputs.items():
        array = np.asarray(value)
        datatype = oip_datatype(array.dtype)
        as_binary = binary if isinstance(binary, bool) else name in binary
        entry = ResponseOutput(name=name, shape=list(array.shape), datatype=datatype)
        if as_binary:
            raw = tensor_to_binary(array)
            entry.parameters = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            try:
                entry.data = tensor_to_json_data(array)
            except NotUtf8Error as exc:
                raise NotUtf8Error(f"output '{name}': {exc}") from None
        entries.append(entry)
    header = InferResponseBody(
        model_name=model_name,
        model_version=model_version or None,
        id=id,
        parameters=parameters or None,
        outputs=entries,
    ).model_dump_json(exclude_none=True)
    head = header.encode("utf-8")
    if not parts:
        return head, {"Content-Type": "application/json"}
    return b"".join([head, *parts]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }
