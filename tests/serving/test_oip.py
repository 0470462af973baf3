"""Open Inference Protocol codec and router: round trips per datatype, malformed requests, and a real
uvicorn server driven by tritonclient.http with its default settings."""

from __future__ import annotations

import gzip
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
import uvicorn
from fastapi import FastAPI
from tritonclient.utils import InferenceServerException

from worldloop.serving.oip import (
    DATATYPES,
    HEADER_LENGTH,
    OipError,
    OipModel,
    TensorMetadata,
    deserialize_bytes,
    encode_infer_response,
    numpy_dtype,
    oip_datatype,
    oip_router,
    parse_infer_request,
    serialize_bytes,
    tensor_to_binary,
    tensor_to_json_data,
)

# --------------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------------


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if datatype == "BYTES":
        values = [f"é{i}\x00x".encode() for i in range(count)]
        return np.array(values, dtype=object).reshape(shape)
    dtype = numpy_dtype(datatype)
    if datatype == "BOOL":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if dtype.kind in "iu":
        low, high = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)  # both extremes when count > 1
        ints = [low + (high - low) * i // max(count - 1, 1) for i in range(count)]
        return np.array(ints, dtype=dtype).reshape(shape)
    return (np.arange(count, dtype=np.float32) * 0.5 - 3.25).astype(dtype).reshape(shape)


def _request(inputs: list[dict[str, Any]], blobs: list[bytes], **extra: Any) -> tuple[bytes, int | None]:
    head = json.dumps({"inputs": inputs, **extra}).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert [bytes(x) for x in got.ravel()] == [bytes(x) for x in want.ravel()]
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("shape", [(2, 3), (0, 4), ()])
def test_request_round_trip_binary_and_json(datatype: str, shape: tuple[int, ...]) -> None:
    array = _sample(datatype, shape)
    assert oip_datatype(array.dtype) == datatype
    raw = tensor_to_binary(array)
    binary_input = {
        "name": "x",
        "shape": list(shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(raw)},
    }
    body, header = _request([binary_input], [raw])
    _assert_same(parse_infer_request(body, header).inputs["x"], array)

    json_input = {"name": "x", "shape": list(shape), "datatype": datatype}
    json_input["data"] = tensor_to_json_data(array)
    body, header = _request([json_input], [])
    got = parse_infer_request(body, header).inputs["x"]
    if datatype == "BF16":  # JSON carries the float32 value; bf16 -> f32 -> bf16 is exact
        got = got.astype(array.dtype)
    _assert_same(got, array)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_round_trip(datatype: str) -> None:
    array = _sample(datatype, (3, 2))
    for binary in (True, False):
        body, headers = encode_infer_response("m", "1", "req-7", {"y": array}, binary=binary)
        if binary:
            assert headers["Content-Type"] == "application/octet-stream"
            head_len = int(headers[HEADER_LENGTH])
        else:
            assert headers == {"Content-Type": "application/json"}
            head_len = None
        result = triton_http.InferResult.from_response_body(body, header_length=head_len)
        assert result.get_response()["model_name"] == "m"
        assert result.get_response()["model_version"] == "1"
        assert result.get_response()["id"] == "req-7"
        got = result.as_numpy("y")
        if datatype == "BYTES" and not binary:  # JSON BYTES come back as str
            got = np.vectorize(lambda s: s.encode(), otypes=[object])(got)
        _assert_same(got, array)


def test_bytes_serialisation_matches_tritonclient() -> None:
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    array = np.array([[b"a\x00b", "ü".encode(), b""], [b"\xff\xfe", b"x" * 300, b"z"]], dtype=object)
    ours = serialize_bytes(array)
    assert ours == serialize_byte_tensor(array).item()
    assert list(deserialize_bytes_tensor(ours)) == list(array.ravel())
    assert list(deserialize_bytes(ours, 6)) == list(array.ravel())
    assert serialize_bytes(np.array(["ü"], dtype=object)) == struct.pack("<I", 2) + "ü".encode()


def test_mixed_binary_and_json_inputs_in_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([b"hi", b"\x00"], dtype=object)
    inputs: list[dict[str, Any]] = [
        {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
        {"name": "j", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]},
        {"name": "b", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}},
    ]
    body, header = _request(
        inputs, [a.tobytes(), serialize_bytes(b)], id="r1", outputs=[{"name": "o", "parameters": {}}]
    )
    request = parse_infer_request(body, header)
    _assert_same(request.inputs["a"], a)
    _assert_same(request.inputs["j"], np.array([[1, 2], [3, 4]], dtype=np.int32))
    _assert_same(request.inputs["b"], b)
    assert request.id == "r1"
    assert request.outputs is not None and request.outputs[0].binary is False


def test_requested_output_binary_flags() -> None:
    x = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    body, _ = _request([x], [], parameters={"binary_data_output": True})
    request = parse_infer_request(body, None)
    assert request.outputs is None and request.binary_outputs(["a", "b"]) == {"a", "b"}
    outputs = [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}]
    body, _ = _request([x], [], parameters={"binary_data_output": True}, outputs=outputs)
    request = parse_infer_request(body, None)
    assert request.binary_outputs(["a", "b"]) == {"b"}  # per-output setting wins, default from request
    body, _ = _request([x], [])
    assert parse_infer_request(body, None).binary_outputs(["a"]) == set()


_F32 = {"name": "img", "shape": [2, 2], "datatype": "FP32"}


@pytest.mark.parametrize(
    ("inputs", "blobs", "header", "message"),
    [
        ([{**_F32, "data": [1.0, 2.0, 3.0]}], [], None, "input 'img': shape [2, 2] needs 4 elements, got 3"),
        ([{**_F32, "datatype": "FP8", "data": [1]}], [], None, "input 'img': unknown datatype 'FP8'"),
        ([{**_F32, "parameters": {"binary_data_size": 12}}], [b"\0" * 12], -1, "needs 16"),
        ([{**_F32, "parameters": {"binary_data_size": 16}}], [b"\0" * 8], -1, "'img': binary_data_size 16"),
        ([{**_F32, "parameters": {"binary_data_size": 16}}], [b"\0" * 20], -1, "add up to 16"),
        ([{**_F32, "data": ["a", "b", "c", "d"]}], [], None, "input 'img': FP32 data must be numbers"),
        ([{**_F32, "data": [[1.0, 2.0], [3.0]]}], [], None, "input 'img': data is not a regular"),
        ([{**_F32, "shape": [2, -2], "data": []}], [], None, "input 'img': shape [2, -2]"),
        ([{**_F32, "shape": [2, "2"], "data": []}], [], None, "input 'img' field 'shape.1'"),
        ([{**_F32}], [], None, "input 'img' has neither 'data' nor"),
        ([{"name": "n", "shape": [2], "datatype": "UINT8", "data": [1, 256]}], [], None, "do not fit UINT8"),
        ([{"name": "n", "shape": [1], "datatype": "INT8", "data": [1.5]}], [], None, "must be integers"),
        ([{"name": "n", "shape": [1], "datatype": "BOOL", "data": [1]}], [], None, "must be booleans"),
        ([{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", 3]}], [], None, "input 's': BYTES"),
        (
            [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}],
            [struct.pack("<I", 1) + b"a" + struct.pack("<I", 9)],
            -1,
            "input 's': BYTES element 1 claims 9 bytes",
        ),
        (
            [{"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}],
            [struct.pack("<I", 1) + b"ab"],
            -1,
            "input 's': 1 bytes left over",
        ),
        ([{**_F32, "data": [1.0] * 4}, {**_F32, "data": [0.0] * 4}], [], None, "'img' appears more than"),
    ],
)
def test_malformed_inputs_name_the_input(
    inputs: list[dict[str, Any]], blobs: list[bytes], header: int | None, message: str
) -> None:
    body, head = _request(inputs, blobs)
    with pytest.raises(OipError) as info:
        parse_infer_request(body, head if header == -1 else header)
    assert info.value.status == 400
    assert message in info.value.message


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{not json", None, "request JSON is malformed"),
        (b"[1, 2]", None, "must be an object"),
        (b'{"inputs": 3}', None, "request field 'inputs'"),
        (b'{"inputs": []}', 99, "Inference-Header-Content-Length is 99 but the request body has only 14"),
        (b'{"inputs": []}', -1, "must not be negative"),
        (b'{"inputs": [], "parameters": {"binary_data_output": "yes"}}', None, "binary_data_output"),
        (b"\xff\xfe", None, "request JSON is malformed"),
    ],
)
def test_malformed_requests(body: bytes, header: int | None, message: str) -> None:
    with pytest.raises(OipError) as info:
        parse_infer_request(body, header)
    assert info.value.status == 400
    assert message in info.value.message


def test_binary_inputs_need_no_copy_and_are_read_only() -> None:
    body, header = _request(
        [{"name": "x", "shape": [4], "datatype": "UINT8", "parameters": {"binary_data_size": 4}}],
        [b"\1\2\3\4"],
    )
    x = parse_infer_request(body, header).inputs["x"]
    assert not x.flags.writeable
    assert x.tolist() == [1, 2, 3, 4]


def test_json_output_of_non_utf8_bytes_is_an_error() -> None:
    with pytest.raises(ValueError, match="output 'y'.*not UTF-8"):
        encode_infer_response("m", "", None, {"y": np.array([b"\xff"], dtype=object)}, binary=False)
    body, _ = encode_infer_response("m", "", None, {"y": np.array(["ok"])}, binary=False)
    assert json.loads(body) == {
        "model_name": "m",
        "outputs": [{"name": "y", "shape": [1], "datatype": "BYTES", "data": ["ok"]}],
    }


# --------------------------------------------------------------------------------------------------
# Router, end to end
# --------------------------------------------------------------------------------------------------


class EchoModel:
    """Image (UINT8 HxWx3) and prompt (BYTES) in; scaled image (FP32), upper-cased prompt, prompt
    lengths (INT32) out."""

    platform = "python"
    inputs = (
        TensorMetadata(name="image", datatype="UINT8", shape=[-1, -1, 3]),
        TensorMetadata(name="prompt", datatype="BYTES", shape=[-1]),
    )
    outputs = (
        TensorMetadata(name="scaled", datatype="FP32", shape=[-1, -1, 3]),
        TensorMetadata(name="upper", datatype="BYTES", shape=[-1]),
        TensorMetadata(name="lengths", datatype="INT32", shape=[-1]),
    )

    def __init__(self, name: str, version: str = "1") -> None:
        self.name = name
        self.version = version
        self.is_ready = True
        self.seen_parameters: dict[str, Any] = {}

    def ready(self) -> bool:
        return self.is_ready

    async def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, np.ndarray]:
        self.seen_parameters = parameters
        missing = [spec.name for spec in self.inputs if spec.name not in inputs]
        if missing:
            raise OipError(400, f"missing input '{missing[0]}'")
        prompt = inputs["prompt"]
        return {
            "scaled": inputs["image"].astype(np.float32) / 255.0 * float(parameters.get("gain", 1.0)),
            "upper": np.array([p.decode().upper().encode() for p in prompt], dtype=object),
            "lengths": np.array([len(p) for p in prompt], dtype=np.int32),
        }


MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, dict[str, EchoModel]]]:
    models: dict[str, EchoModel] = {"echo": EchoModel("echo"), "spare": EchoModel("spare", version="")}

    def registry() -> Mapping[str, OipModel]:  # called per request, like a loading/unloading registry
        return models

    app = FastAPI()
    app.include_router(oip_router(registry, server_version="9.9", max_body_bytes=MAX_BODY))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}", models
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def client(server: tuple[str, dict[str, EchoModel]]) -> Iterator[triton_http.InferenceServerClient]:
    with triton_http.InferenceServerClient(url=server[0]) as triton:
        yield triton


def _inputs(image: np.ndarray, prompt: np.ndarray, *, binary: bool = True) -> list[triton_http.InferInput]:
    image_in = triton_http.InferInput("image", list(image.shape), "UINT8")
    prompt_in = triton_http.InferInput("prompt", list(prompt.shape), "BYTES")
    if binary:  # the client's default: binary_data=True
        image_in.set_data_from_numpy(image)
        prompt_in.set_data_from_numpy(prompt)
    else:
        image_in.set_data_from_numpy(image, binary_data=False)
        prompt_in.set_data_from_numpy(prompt, binary_data=False)
    return [image_in, prompt_in]


IMAGE = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
PROMPT = np.array(["walk north", "ouvre la porte é"], dtype=object)


def test_health_and_metadata(
    server: tuple[str, dict[str, EchoModel]], client: triton_http.InferenceServerClient
) -> None:
    models = server[1]
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("echo")
    assert client.is_model_ready("echo", "1")
    assert not client.is_model_ready("echo", "2")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata() == {
        "name": "worldloop",
        "version": "9.9",
        "extensions": ["binary_tensor_data"],
    }
    meta = client.get_model_metadata("echo")
    assert meta["name"] == "echo" and meta["versions"] == ["1"] and meta["platform"] == "python"
    assert meta["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, -1, 3]}
    assert [o["name"] for o in meta["outputs"]] == ["scaled", "upper", "lengths"]
    assert client.get_model_metadata("spare")["versions"] == []
    assert client.get_model_metadata("echo", "1") == meta
    config = client.get_model_config("echo")
    assert config["input"][1] == {"name": "prompt", "data_type": "TYPE_STRING", "dims": [-1]}
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"

    models["spare"].is_ready = False
    try:
        assert not client.is_server_ready()
        assert not client.is_model_ready("spare")
        assert client.is_model_ready("echo")
        with pytest.raises(InferenceServerException, match="model 'spare' is not ready") as info:
            client.infer("spare", _inputs(IMAGE, PROMPT))
        assert info.value.status() == "503"
    finally:
        models["spare"].is_ready = True


def test_infer_binary_default(client: triton_http.InferenceServerClient) -> None:
    result = client.infer("echo", _inputs(IMAGE, PROMPT), request_id="r-1")
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == "echo" and response["model_version"] == "1"
    assert all("binary_data_size" in out["parameters"] for out in response["outputs"])
    np.testing.assert_array_equal(result.as_numpy("scaled"), IMAGE.astype(np.float32) / 255.0)
    assert result.as_numpy("scaled").dtype == np.float32
    assert result.as_numpy("upper").tolist() == [b"WALK NORTH", "OUVRE LA PORTE É".encode()]
    np.testing.assert_array_equal(result.as_numpy("lengths"), [10, len("ouvre la porte é".encode())])


def test_infer_json_output_and_versioned_path(server: Any, client: triton_http.InferenceServerClient) -> None:
    outputs = [
        triton_http.InferRequestedOutput("lengths", binary_data=False),
        triton_http.InferRequestedOutput("scaled"),
    ]
    inputs = _inputs(IMAGE, PROMPT)
    result = client.infer("echo", inputs, model_version="1", outputs=outputs, parameters={"gain": 2})
    response = result.get_response()
    assert [out["name"] for out in response["outputs"]] == ["lengths", "scaled"]
    assert response["outputs"][0]["data"] == [10, 17]
    np.testing.assert_allclose(result.as_numpy("scaled"), IMAGE.astype(np.float32) / 255.0 * 2, rtol=1e-6)
    assert result.as_numpy("upper") is None
    assert server[1]["echo"].seen_parameters == {"gain": 2}


def test_infer_json_inputs_and_json_outputs(client: triton_http.InferenceServerClient) -> None:
    outputs = [triton_http.InferRequestedOutput(name, binary_data=False) for name in ("scaled", "upper")]
    result = client.infer("echo", _inputs(IMAGE, PROMPT, binary=False), outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("scaled"), IMAGE.astype(np.float32) / 255.0, rtol=1e-6)
    assert result.as_numpy("upper").tolist() == ["WALK NORTH", "OUVRE LA PORTE É"]


def test_infer_client_errors(client: triton_http.InferenceServerClient) -> None:
    cases: list[tuple[list[triton_http.InferInput], list[Any] | None, str]] = [
        (_inputs(IMAGE, PROMPT)[:1], None, "missing input 'prompt'"),  # the model's own OipError
        (_inputs(IMAGE[..., :2], PROMPT), None, "input 'image': shape [4, 6, 2] does not match"),
        ([*_inputs(IMAGE, PROMPT), _inputs(IMAGE, PROMPT)[0]], None, "'image' appears more than once"),
        (_inputs(IMAGE, PROMPT), [triton_http.InferRequestedOutput("nope")], "has no output 'nope'"),
    ]
    extra = triton_http.InferInput("extra", [1], "FP32").set_data_from_numpy(np.ones(1, np.float32))
    cases.append(([*_inputs(IMAGE, PROMPT), extra], None, "has no input 'extra'"))
    wrong = triton_http.InferInput("image", [1], "FP32").set_data_from_numpy(np.ones(1, np.float32))
    cases.append(([wrong, _inputs(IMAGE, PROMPT)[1]], None, "'image': datatype FP32, model expects UINT8"))
    for inputs, outputs, message in cases:
        with pytest.raises(InferenceServerException, match=re.escape(message)) as info:
            client.infer("echo", inputs, outputs=outputs)
        assert info.value.status() == "400", message


def _raw_infer(
    base: str, content: Any, headers: dict[str, str] | None = None, model: str = "echo"
) -> httpx.Response:
    url = f"http://{base}/v2/models/{model}/infer"
    return httpx.post(url, content=content, headers=headers or {}, timeout=10)


def _assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and fragment in body["error"]


def test_raw_http_errors(server: tuple[str, dict[str, EchoModel]]) -> None:
    base = server[0]
    _assert_error(_raw_infer(base, b"{nope"), 400, "request JSON is malformed")
    _assert_error(_raw_infer(base, b"{}", model="ghost"), 404, "unknown model 'ghost'")
    _assert_error(httpx.get(f"http://{base}/v2/models/echo/versions/7"), 404, "has no version '7'")
    _assert_error(_raw_infer(base, b" " * (MAX_BODY + 1)), 413, "exceeds the limit")
    _assert_error(_raw_infer(base, b'{"inputs": []}', {HEADER_LENGTH: "100"}), 400, "is 100 but")
    _assert_error(_raw_infer(base, b'{"inputs": []}', {HEADER_LENGTH: "x"}), 400, "must be an integer")
    _assert_error(_raw_infer(base, b"{}", {"Content-Encoding": "br"}), 415, "Content-Encoding")
    bomb = gzip.compress(b" " * (MAX_BODY * 4))
    assert len(bomb) < MAX_BODY
    _assert_error(_raw_infer(base, bomb, {"Content-Encoding": "gzip"}), 413, "decompressed request body")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    _assert_error(_raw_infer(base, chunks()), 413, "exceeds the limit")

    live = httpx.get(f"http://{base}/v2/health/live")
    assert live.status_code == 200 and live.content == b""


def test_raw_http_gzip_request_and_pure_json_response(server: tuple[str, dict[str, EchoModel]]) -> None:
    request = {
        "inputs": [
            {"name": "image", "shape": [1, 1, 3], "datatype": "UINT8", "data": [0, 51, 255]},
            {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["go"]},
        ],
        "outputs": [{"name": "scaled"}],
    }
    body = gzip.compress(json.dumps(request).encode())
    response = _raw_infer(server[0], body, {"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert HEADER_LENGTH.lower() not in response.headers
    assert response.json()["outputs"] == [
        {"name": "scaled", "shape": [1, 1, 3], "datatype": "FP32", "data": [0.0, pytest.approx(0.2), 1.0]}
    ]
