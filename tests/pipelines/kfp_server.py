"""A KFP v2beta1 REST API server for tests: just the endpoints ``kfp.Client`` calls to upload a
pipeline, create an experiment and a run, and poll the run. Runs end in ``final_state``."""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

NOW = "2026-01-01T00:00:00Z"


@dataclass
class FakeKfp:
    final_state: str = "SUCCEEDED"
    polls_before_done: int = 1
    requests: list[tuple[str, str]] = field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> pipeline (+ "yaml")
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # pipeline id -> version
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append(("GET", self.path))
                status, body = fake.get(urlparse(self.path))
                self._send(status, body)

            def do_POST(self) -> None:  # noqa: N802
                fake.requests.append(("POST", self.path))
                url = urlparse(self.path)
                if url.path == "/apis/v2beta1/pipelines/upload":
                    status, body = fake.upload(self.headers, self._body(), parse_qs(url.query))
                else:
                    status, body = fake.post(url.path, json.loads(self._body() or b"{}"))
                self._send(status, body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    def get(self, url: Any) -> tuple[int, dict[str, Any]]:
        path, query = url.path, parse_qs(url.query)
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False}
        if path == "/apis/v2beta1/pipelines":
            wanted = _filter_name(query)
            found = [p for p in self.pipelines.values() if wanted in (None, p["display_name"])]
            return 200, {"pipelines": [_public(p) for p in found], "total_size": len(found)} if found else {}
        if m := re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", path):
            version = self.versions.get(m.group(1))
            return (200, {"pipeline_versions": [version], "total_size": 1}) if version else (200, {})
        if path == "/apis/v2beta1/experiments":
            wanted = _filter_name(query)
            found = [e for e in self.experiments.values() if wanted in (None, e["display_name"])]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if m := re.fullmatch(r"/apis/v2beta1/runs/([^/]+)", path):
            run = self.runs.get(m.group(1))
            if run is None:
                return 404, {"error": "run not found", "code": 5}
            self.polls[run["run_id"]] = self.polls.get(run["run_id"], 0) + 1
            if self.polls[run["run_id"]] > self.polls_before_done:
                run["state"] = self.final_state
                run["finished_at"] = NOW
                if self.final_state == "FAILED":
                    run["error"] = {"code": 2, "message": "task train-stage-3 failed: out of memory"}
            return 200, run
        return 404, {"error": f"no route GET {path}", "code": 5}

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/apis/v2beta1/experiments":
            exp = {
                **body,
                "experiment_id": str(uuid.uuid4()),
                "created_at": NOW,
                "storage_state": "AVAILABLE",
            }
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if path == "/apis/v2beta1/runs":
            run = {**body, "run_id": str(uuid.uuid4()), "state": "RUNNING", "created_at": NOW}
            self.runs[run["run_id"]] = run
            return 200, run
        return 404, {"error": f"no route POST {path}", "code": 5}

    def upload(self, headers: Any, body: bytes, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        head = f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        part = next(
            p
            for p in message.iter_parts()
            if p.get_param("name", header="content-disposition") == "uploadfile"
        )
        filename = part.get_filename()
        name = query.get("name", [None])[0] or filename
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        pid = str(uuid.uuid4())
        pipeline = {"pipeline_id": pid, "display_name": name, "created_at": NOW, "yaml": data.decode()}
        self.pipelines[pid] = pipeline
        self.versions[pid] = {
            "pipeline_id": pid,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "created_at": NOW,
        }
        return 200, _public(pipeline)


def _public(pipeline: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pipeline.items() if k != "yaml"}


def _filter_name(query: dict[str, list[str]]) -> str | None:
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"][0]).get("predicates", [])
    for p in predicates:
        if p.get("key") in ("name", "display_name"):
            return str(p.get("string_value") or p.get("stringValue"))
    return None
