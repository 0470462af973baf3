"""Python SDK for the worldloop serving API (REST sessions, WebSocket play, KServe v2 generation).

::

    from worldloop.serving.client import Client

    client = Client("http://localhost:8000", api_key="...")
    session = client.create_session("a stone courtyard", image="start.png")
    with client.play(session.id) as play:
        for block in play.step(keys=["w"], mouse=(5.0, 0.0)):
            frames = block.frames            # (n, H, W, 3) uint8
        play.step(text="open the door")      # one KV recache on the server
    video = client.generate("a courtyard", actions=["w"] * 16)   # one call, (1 + F, H, W, 3) uint8
    client.delete_session(session.id)

A play connection that drops because the generator replica was lost (close code 1013) or the network
blinked reconnects to the same session and resends the step: the server rebuilds the stream from the
last frame, and frame numbering continues.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from worldloop.serving import protocol as p


class ServingError(RuntimeError):
    """The server refused a request; ``status`` is its HTTP status (or WebSocket close code)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


@dataclass
class Block:
    """A decoded block: its header and frames (n, H, W, 3) uint8."""

    header: p.BlockMessage
    frames: np.ndarray

    @property
    def last_index(self) -> int:
        return self.header.first_index + self.header.count - 1


def _decode(raw: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(raw)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _image_b64(image: str | Path | bytes | np.ndarray) -> str:
    if isinstance(image, np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
        raw = buf.getvalue()
    elif isinstance(image, bytes):
        raw = image
    else:
        raw = Path(image).read_bytes()
    return base64.b64encode(raw).decode("ascii")


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        message = error["message"] if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    raise ServingError(response.status_code, message)


class Client:
    """A connection to one worldloop server (``url`` = where the app is routed, e.g. ``http://h:8000``)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/") + "/"
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.timeout = timeout

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- REST ---------------------------------------------------------------------------------------
    def create_session(
        self,
        prompt: str,
        *,
        image: str | Path | bytes | np.ndarray | None = None,
        instruction: str | None = None,
        seed: int | None = None,
        frame_format: str = "jpeg",
        quality: int = 85,
    ) -> p.SessionInfo:
        body: dict[str, Any] = {
            "prompt": prompt,
            "instruction": instruction,
            "seed": seed,
            "frames": {"format": frame_format, "quality": quality},
        }
        if image is not None:
            body["image"] = _image_b64(image)
        response = self.http.post("v1/sessions", json=body)
        _raise_for(response)
        return p.SessionInfo.model_validate(response.json())

    def get_session(self, session: str) -> p.SessionInfo:
        response = self.http.get(f"v1/sessions/{session}")
        _raise_for(response)
        return p.SessionInfo.model_validate(response.json())

    def list_sessions(self) -> list[p.SessionInfo]:
        response = self.http.get("v1/sessions")
        _raise_for(response)
        return p.SessionList.model_validate(response.json()).sessions

    def last_frame(self, session: str) -> np.ndarray:
        response = self.http.get(f"v1/sessions/{session}/frame")
        _raise_for(response)
        return _decode(response.content)

    def delete_session(self, session: str) -> None:
        _raise_for(self.http.delete(f"v1/sessions/{session}"))

    # -- play ---------------------------------------------------------------------------------------
    def play(self, session: str, *, reconnects: int = 5) -> PlaySession:
        """Open the session's play socket (use as a context manager)."""
        return PlaySession(self, session, reconnects=reconnects)

    def socket_url(self, session: str) -> str:
        scheme, netloc, path, _, _ = urlsplit(self.url)
        ws = {"http": "ws", "https": "wss"}[scheme]
        query = f"api_key={self.api_key}" if self.api_key else ""
        return urlunsplit((ws, netloc, f"{path}v1/sessions/{session}/play", query, ""))

    # -- KServe v2 ----------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str,
        actions: Sequence[str],
        *,
        image: np.ndarray | None = None,
        mouse: np.ndarray | None = None,
        instruction: str | None = None,
        instruction_frame: int = 1,
        seed: int = 0,
    ) -> np.ndarray:
        """One whole rollout through ``/v2/models/worldloop/infer`` (tritonclient, binary tensors).

        ``actions`` holds one action per generated frame ("w", "w+a", "none"), ``mouse`` (F, 2) one
        (dx, dy) per frame; both may change on any frame, and the camera follows each."""
        import tritonclient.http as triton

        netloc = urlsplit(self.url).netloc
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        client = triton.InferenceServerClient(
            netloc, ssl=self.url.startswith("https"), network_timeout=self.timeout
        )
        tensors: list[tuple[str, np.ndarray, str]] = [
            ("prompt", np.array([prompt.encode()], dtype=object), "BYTES"),
            ("actions", np.array([a.encode() for a in actions], dtype=object), "BYTES"),
            ("seed", np.array([seed], dtype=np.int64), "INT64"),
        ]
        if image is not None:
            tensors.append(("image", np.ascontiguousarray(image, dtype=np.uint8), "UINT8"))
        if mouse is not None:
            tensors.append(("mouse", np.ascontiguousarray(mouse, dtype=np.float32), "FP32"))
        if instruction is not None:
            tensors.append(("instruction", np.array([instruction.encode()], dtype=object), "BYTES"))
            tensors.append(("instruction_frame", np.array([instruction_frame], dtype=np.int32), "INT32"))
        inputs = []
        for name, array, datatype in tensors:
            tensor = triton.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        try:
            result = client.infer("worldloop", inputs, headers=headers)
        finally:
            client.close()
        video: np.ndarray | None = result.as_numpy("video")
        assert video is not None
        return video


class PlaySession:
    """A live play socket: :meth:`step` sends inputs and returns the generated blocks."""

    def __init__(self, client: Client, session: str, *, reconnects: int) -> None:
        self.client, self.session, self.reconnects = client, session, reconnects
        self.ws: ClientConnection | None = None
        self.hello: p.Hello | None = None
        self.frame: np.ndarray | None = None  # the last frame received
        self.connects = 0
        self._connect()

    def _connect(self) -> None:
        delay = 0.5
        for attempt in range(self.reconnects + 1):
            try:
                self.ws = connect(
                    self.client.socket_url(self.session),
                    open_timeout=self.client.timeout,
                    max_size=64 * 1024 * 1024,
                ).__enter__()  # closed by close(); the object is its own context manager
                first = self.ws.recv(timeout=self.client.timeout)
                message = json.loads(first)
                if message.get("type") == "error":
                    raise ServingError(int(message["status"]), message["message"])
                self.hello = p.Hello.model_validate(message)
                self.frame = _decode(self._binary())
                self.connects += 1
                return
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else 1006
                if code in (p.CLOSE_BAD_KEY, p.CLOSE_UNKNOWN_SESSION) or attempt == self.reconnects:
                    reason = closed.rcvd.reason if closed.rcvd else "connection closed"
                    raise ServingError(code, reason) from None
            except OSError:
                if attempt == self.reconnects:
                    raise
            time.sleep(delay)
            delay = min(8.0, delay * 2)

    def _binary(self) -> bytes:
        assert self.ws is not None
        data = self.ws.recv(timeout=self.client.timeout)
        if not isinstance(data, bytes):
            raise ServingError(502, f"expected a frame, got text {str(data)[:200]!r}")
        return data

    def _step_once(self, message: str, blocks: int) -> list[Block]:
        assert self.ws is not None
        self.ws.send(message)
        out: list[Block] = []
        while len(out) < blocks:
            data = json.loads(self.ws.recv(timeout=self.client.timeout))
            if data.get("type") == "error":
                raise ServingError(int(data["status"]), data["message"])
            header = p.BlockMessage.model_validate(data)
            frames = np.stack([_decode(self._binary()) for _ in range(header.count)])
            self.frame = frames[-1]
            out.append(Block(header, frames))
        return out

    def step(
        self,
        keys: Sequence[str] = (),
        mouse: tuple[float, float] = (0.0, 0.0),
        text: str | None = None,
        blocks: int = 1,
    ) -> list[Block]:
        """Hold ``keys`` (and move the mouse by ``mouse``) for ``blocks`` blocks; ``text`` instructs."""
        message = p.StepMessage(type="step", keys=list(keys), mouse=mouse, text=text, blocks=blocks)
        payload = message.model_dump_json()
        for attempt in range(self.reconnects + 1):
            try:
                return self._step_once(payload, blocks)
            except ConnectionClosed:
                if attempt == self.reconnects:
                    raise
                self._connect()  # the server resumes the session from its last frame
        raise AssertionError("unreachable")

    def ping(self) -> None:
        assert self.ws is not None
        self.ws.send(json.dumps({"type": "ping"}))
        if json.loads(self.ws.recv(timeout=self.client.timeout)).get("type") != "pong":
            raise ServingError(502, "no pong")

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def __enter__(self) -> PlaySession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
