"""The one client of an OpenAI-compatible Chat Completions endpoint: where and how to call it
(:class:`ChatEndpointConfig`), the HTTP exchange with its single retry policy (:class:`ChatClient`,
failing with :class:`ChatError`) and the small pieces around a request: frames as JPEG data URLs, the
text of an answer, the JSON object in it.

Retry policy (one for every caller): connection errors, timeouts and HTTP 408/429/5xx are retried up to
``max_retries`` times, waiting ``backoff_s * 2**(n - 1)`` seconds after the n-th failed attempt, capped at
``backoff_max_s``; a ``Retry-After`` header (in seconds) lengthens that wait, up to the same cap. Any other
HTTP error fails at once. A 2xx body that is not a chat completion raises :class:`UnusableAnswer`:
whether and how to ask again is the caller's answer-level decision, not an HTTP retry.

The curation captioner (``components/curation/captioning/vlm_captioner.py``) and the InterBench VLM
judge (``components/evaluation/judges/vlm.py``) subclass :class:`ChatClient`; each keeps only its own
prompts, answer schema and answer-level retries.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import cv2
import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({408, 429})  # plus every 5xx: the request may succeed when sent again


class ChatEndpointConfig(BaseModel):
    """The endpoint, the model and the HTTP behaviour (timeouts, retries with exponential backoff)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(description="Base URL of the OpenAI-compatible API, e.g. http://vlm:8000/v1.")
    model: str = Field(min_length=1, description="Model name sent with every request.")
    api_key: SecretStr | None = Field(None, description="Bearer token; overrides api_key_env.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable read for the key when api_key is unset."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request connect/read/write timeout.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a failed HTTP request.")
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles on each retry.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest delay between attempts.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 keeps answers (near) deterministic.")
    max_tokens: int | None = Field(None, ge=1, description="Sent as max_tokens when set.")
    trust_env: bool = Field(True, description="Let httpx use proxy settings from the environment.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"endpoint must be an http(s) URL, got {value!r}")
        return value.removesuffix("/chat/completions")

    def resolved_api_key(self) -> str | None:
        """The explicit key, else the one in ``api_key_env``, else None."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        key = self.resolved_api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def backoff(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): ``backoff_s * 2**(attempt - 1)``,
        at least ``retry_after_s`` when the server sent one, never more than ``backoff_max_s``."""
        delay = min(self.backoff_s * 2.0 ** (attempt - 1), self.backoff_max_s)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.backoff_max_s))
        return delay


class ChatError(RuntimeError):
    """The endpoint could not give an answer: unreachable, too slow, or refusing the request (after the
    retries the policy allows). ``endpoint`` is the URL called, ``attempts`` the requests made and
    ``reason`` what went wrong last."""

    def __init__(self, message: str, *, endpoint: str, attempts: int, reason: str) -> None:
        super().__init__(message)
        self.endpoint, self.attempts, self.reason = endpoint, attempts, reason


class UnusableAnswer(ValueError):
    """A 2xx response whose answer cannot be used: the body is not a chat completion, or (raised by the
    callers' parsers) the message is not the JSON object their schema wants."""


ConfigT = TypeVar("ConfigT", bound=ChatEndpointConfig)
_Client = TypeVar("_Client", bound="ChatClient[Any]")


class ChatClient(Generic[ConfigT]):
    """Sends Chat Completions requests to ``{endpoint}/chat/completions`` under the module's retry policy.

    ``client`` (an ``httpx.Client``; closed by :meth:`close` only when this object made it) and ``sleep``
    are injectable for tests. A caller that asks the endpoint something (the captioner, the VLM judge)
    subclasses it with its own config type, ``kind`` (its name is ``{kind}:{model}``) and ``error`` (the
    :class:`ChatError` subclass raised, so that its callers' handlers catch their own type), and keeps
    only its prompts, answer schema and answer-level retries.
    """

    kind: ClassVar[str] = "chat"
    error: ClassVar[type[ChatError]] = ChatError

    def __init__(
        self,
        config: ConfigT,
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.name = f"{self.kind}:{config.model}"
        self.url = f"{config.endpoint}/chat/completions"
        self._own_client = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(config.timeout_s), trust_env=config.trust_env
        )
        self._sleep = sleep

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request_body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The request for ``messages`` with the configured model, asking for a JSON object answer."""
        payload: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "response_format": {"type": "json_object"},
        }
        if self.config.max_tokens is not None:
            payload["max_tokens"] = self.config.max_tokens
        return payload

    def failure(self, what: str, *, attempts: int, reason: str, retried: bool = True) -> ChatError:
        """The error (of the class's ``error`` type) for ``what`` failing after ``attempts`` requests."""
        how = "" if retried else ", not retried"
        return self.error(
            f"{self.name}: {what} via {self.url} failed after {attempts} attempt(s){how}: {reason}",
            endpoint=self.url,
            attempts=attempts,
            reason=reason,
        )

    def complete(self, payload: Mapping[str, Any], *, what: str) -> dict[str, Any]:
        """The parsed body of a successful completion of ``payload`` (``what`` names the request in logs
        and errors). Raises the class's ``error`` (a :class:`ChatError`) when the retry policy gives up, and
        :class:`UnusableAnswer` when the 2xx body has no ``choices[0].message.content``."""
        cfg = self.config
        attempts = cfg.max_retries + 1
        for attempt in range(1, attempts + 1):
            wait_at_least: float | None = None
            try:
                response = self._client.post(
                    self.url, json=payload, headers=cfg.headers(), timeout=httpx.Timeout(cfg.timeout_s)
                )
            except httpx.TimeoutException as exc:
                reason = f"timeout after {cfg.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                reason = f"connection error ({type(exc).__name__}: {exc})"
            else:
                if response.is_success:
                    return _completion(response)
                reason = f"HTTP {response.status_code}: {response_snippet(response)}"
                if response.status_code not in RETRIED_STATUSES and response.status_code < 500:
                    raise self.failure(what, attempts=attempt, reason=reason, retried=False)
                wait_at_least = retry_after(response)
            if attempt < attempts:
                delay = cfg.backoff(attempt, wait_at_least)
                log.warning(
                    "%s: %s via %s: attempt %d/%d failed (%s); retrying in %.2f s",
                    self.name,
                    what,
                    self.url,
                    attempt,
                    attempts,
                    reason,
                    delay,
                )
                self._sleep(delay)
        raise self.failure(what, attempts=attempts, reason=reason)


def _completion(response: httpx.Response) -> dict[str, Any]:
    try:
        body: dict[str, Any] = response.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UnusableAnswer(f"response body is not JSON: {response_snippet(response)}") from exc
    message_text(body)  # raises UnusableAnswer unless the body is an object with a message's content
    return body


def message_text(body: Mapping[str, Any]) -> str:
    """The text of a completion's ``choices[0].message.content``: the string, or the text parts of a
    list of content parts joined. Raises :class:`UnusableAnswer` when the body has no such content."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise UnusableAnswer("response has no choices[0].message.content") from exc
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def json_object(text: str) -> dict[str, Any]:
    """The JSON object in an answer's text (code fences and text around the braces tolerated). Raises
    :class:`UnusableAnswer` saying what is wrong."""
    if not text.strip():
        raise UnusableAnswer("empty message content")
    try:
        data = json.loads(strip_fences(text))
    except json.JSONDecodeError as exc:
        raise UnusableAnswer(f"content is not JSON ({exc.msg} at {exc.pos})") from exc
    if not isinstance(data, dict):
        raise UnusableAnswer(f"expected a JSON object, got {type(data).__name__}")
    return data


def strip_fences(content: str) -> str:
    """The JSON object inside a model's answer: unwraps ```json fences and text around the braces."""
    text = content.strip()
    fenced = re.search(r"```(?:json|JSON)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        return fenced.group(1).strip()
    if not text.startswith("{") and "{" in text and "}" in text:
        return text[text.index("{") : text.rindex("}") + 1]
    return text


def encode_jpeg(frame: np.ndarray, quality: int, max_side: int) -> bytes:
    """JPEG bytes of an RGB uint8 frame (H, W, 3), scaled down so that its longer side is at most
    ``max_side``."""
    height, width = frame.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(frame[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def jpeg_data_url(frame: np.ndarray, quality: int, max_side: int) -> str:
    """``data:image/jpeg;base64,…`` of a frame (H, W, 3) uint8 RGB, as an ``image_url`` part takes it."""
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(frame, quality, max_side)).decode()


def response_snippet(response: httpx.Response, limit: int = 200) -> str:
    """The start of a response body on one line, for error messages."""
    try:
        text = response.text
    except UnicodeDecodeError:
        text = repr(response.content[:limit])
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else (text or "<empty body>")


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None when absent or not a number."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
