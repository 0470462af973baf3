"""What every client of an OpenAI-compatible Chat Completions endpoint shares: where and how to call it
(:class:`ChatEndpointConfig`) and the small pieces around a request — frames as JPEG data URLs, JSON
out of fenced answers, a readable snippet of a failed response, ``Retry-After``.

Used by the curation captioner (``components/curation/captioning/chat.py``) and the InterBench VLM judge
(``components/evaluation/judges/vlm.py``); each keeps its own prompts, answer schema and retry policy.
"""

from __future__ import annotations

import base64
import math
import os
import re

import cv2
import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


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


def encode_jpeg(frame: np.ndarray, quality: int, max_side: int) -> bytes:
    """JPEG bytes of an RGB uint8 frame, scaled down so that its longer side is at most ``max_side``."""
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
    """``data:image/jpeg;base64,…`` of a frame, as an ``image_url`` content part takes it."""
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(frame, quality, max_side)).decode()


def strip_fences(content: str) -> str:
    """The JSON object inside a model's answer: unwraps ```json fences and text around the braces."""
    text = content.strip()
    fenced = re.search(r"```(?:json|JSON)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        return fenced.group(1).strip()
    if not text.startswith("{") and "{" in text and "}" in text:
        return text[text.index("{") : text.rindex("}") + 1]
    return text


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
