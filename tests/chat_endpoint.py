"""A real local HTTP server speaking the Chat Completions protocol, for the tests of the chat client
(``tests/worldloop/platform/test_chat.py``) and of its callers (the captioner, the VLM judge): every
request is recorded, and a script answers the n-th one."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant message; None: send `raw` as the body instead
    raw: bytes = b""
    delay_s: float = 0.0  # before answering (timeout tests)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Sent:
    """One request as the server saw it."""

    path: str
    authorization: str | None
    content_type: str | None
    body: dict[str, Any]


Script = Callable[[int, Sent], Reply]  # (1-based request number, the request) -> the reply


class Server(NamedTuple):
    url: str  # the API base, ending in /v1
    received: list[Sent]


def endpoint_fields(url: str, **overrides: Any) -> dict[str, Any]:
    """``ChatEndpointConfig`` fields for a test against ``url``: model test-vlm, no key or proxy from the
    environment, a 5 s timeout and a 10 ms first backoff, then ``overrides``."""
    fields = {"endpoint": url, "model": "test-vlm", "api_key_env": None, "trust_env": False}
    return fields | {"timeout_s": 5.0, "backoff_s": 0.01} | overrides


def completion(n: int, content: str) -> bytes:
    """The body of a chat completion whose one choice's message is ``content``."""
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    body = {"id": f"cmpl-{n}", "object": "chat.completion", "model": "test-vlm", "choices": [choice]}
    return json.dumps(body).encode()


@contextmanager
def chat_server(script: Script) -> Iterator[Server]:
    """A ThreadingHTTPServer on 127.0.0.1 answering every POST with ``script``."""
    received: list[Sent] = []
    lock, stop = threading.Lock(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            sent = Sent(self.path, self.headers.get("Authorization"), self.headers.get("Content-Type"), body)
            with lock:
                received.append(sent)
                n = len(received)
            reply = script(n, sent)
            stop.wait(reply.delay_s)
            data = reply.raw if reply.content is None else completion(n, reply.content)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_address[1]}/v1", received)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def refused_url() -> str:
    """An API base on a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
