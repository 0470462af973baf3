"""The served app keeps the contract its ``/openapi.json`` states: an OpenAPI fuzzer (schemathesis),
every check on, every phase (coverage, fuzzing, stateful), finds nothing.

The app runs with API keys on, so the document declares its security schemes and 401s and the fuzzer
also checks that requests without a key are refused (``ignored_auth``). Settings are in
``schemathesis.toml`` beside this file (one documented exception: a schema-valid inference request may
get 400, as only the model's metadata says which tensors it takes); hooks in ``contract_hooks.py``
(real images for the ``image-base64`` format).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from worldloop.serving.contract import complete

HERE = Path(__file__).parent
KEY = "contract-test-key-0123456789"


def test_the_served_app_keeps_its_openapi_contract(serve_cluster, tiny_checkpoint, tmp_path) -> None:
    pytest.importorskip("schemathesis")
    server = serve_cluster.deploy(
        "contract", {"model": str(tiny_checkpoint)}, settings={"serve_api_keys": [KEY]}
    )
    schema_url = server.url + "openapi.json"
    document = httpx.get(schema_url).json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKeyHeader", "apiKeyQuery"}

    report = tmp_path / "report.json"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        schema_url,
        "--url",
        server.url.rstrip("/"),
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "40",
        "--seed",
        "20261205",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "contract_hooks", "PYTHONPATH": str(HERE)}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-12000:]

    summary = json.loads(report.read_text())
    print(json.dumps(summary, indent=1)[:2000])
    text = output.replace("\r", "")
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in text, (phase, text[-4000:])
    # The stateful phase followed the documented links: created sessions were read, framed and deleted.
    links = next(line for line in text.splitlines() if "API Links:" in line)
    assert int(links.split("API Links:")[1].split("covered")[0]) >= 3, links


def test_the_document_states_security_only_when_keys_are_on() -> None:
    from worldloop.serving.ingress import api

    base = api.openapi()  # no ingress yet: keys off
    assert "securitySchemes" not in base.get("components", {})
    keyed = complete(base, keys=True)
    for path, operations in keyed["paths"].items():
        for method, operation in operations.items():
            open_route = path in ("/v2", "/v2/health/live", "/v2/health/ready")
            assert ("401" in operation["responses"]) is not open_route, (method, path)
            assert ("security" in operation) is not open_route, (method, path)
            assert "422" not in operation["responses"], (method, path)  # validation answers 400
    error = keyed["paths"]["/v2/models/{name}/infer"]["post"]["responses"]["401"]
    assert error["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")  # OIP's shape
    session_error = keyed["paths"]["/v1/sessions"]["post"]["responses"]["429"]
    assert session_error["content"]["application/json"]["schema"]["$ref"].endswith("/ApiErrorBody")
    assert "HTTPValidationError" not in keyed["components"]["schemas"]


def test_the_model_status_reports_what_is_served_and_what_was_refused(live_server) -> None:
    status = httpx.get(live_server.url + "v1/model").json()
    assert status["preset"] == "tiny" and (status["width"], status["height"]) == (64, 64)
    assert status["refusals"] == 0 and status["last_refusal"] is None  # a checkpoint follows no alias


def test_a_405_names_every_method_of_the_path(live_server) -> None:
    answer = httpx.request("PUT", live_server.url + "v1/sessions")
    assert answer.status_code == 405
    assert set(answer.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert answer.json()["error"]["status"] == 405
    oip = httpx.request("PUT", live_server.url + "v2/models/worldloop/infer")
    assert oip.status_code == 405 and oip.headers["allow"] == "POST"
    assert isinstance(oip.json()["error"], str)  # the OIP error object under /v2
