"""A VLM/LLM captioner behind an OpenAI-compatible Chat Completions endpoint: keyframes as JPEG
data URLs, a validated JSON answer, retries with backoff."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)
from worldloop.components.curation.captioning.base import (
    CaptionError,
    CaptionRequest,
    CaptionResult,
)
from worldloop.components.synthworld.schema import Captions, InteractionCaption

from worldloop.chat import (
    ChatEndpointConfig,
    encode_jpeg,
    response_snippet,
    strip_fences,
)
from worldloop.chat import retry_after as parse_retry_after

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Chat captioner (OpenAI-compatible Chat Completions)
# --------------------------------------------------------------------------------------------------


class ChatCaptionerConfig(ChatEndpointConfig):
    """Where and how to ask a VLM/LLM for captions (endpoint, model, HTTP: :class:`ChatEndpointConfig`)."""

    max_frames: int = Field(4, ge=0, le=32, description="Keyframes attached as images.")
    max_image_side: int = Field(768, ge=16, description="Longer image side is scaled down to this.")
    jpeg_quality: int = Field(85, ge=1, le=100)
    require_candidate: bool = Field(
        True, description="Drop the model's interaction when the visual miner found no candidate."
    )


class _ChatAnswer(BaseModel):
    """The JSON object the model must answer with."""

    model_config = ConfigDict(extra="ignore")

    captions: Captions
    interaction: InteractionCaption | None = None


SYSTEM_PROMPT = (
    "You caption first-person game videos to train an interactive world model. "
    "An interaction is an action performed by a clear agent that triggers a state transition in the "
    "environment with clear causality and physical or logical validity; camera motion alone is never an "
    "interaction. Interactions fall into three kinds: environment changes (snow, rain, nightfall, an "
    "explosion), character actions (opening a door, drawing a torch, shooting) and entity emergence (a "
    "dragon, a vehicle or a person appears). Trust the images over the scraped caption, which may be "
    "wrong, incomplete or garbled. Answer with a single JSON object and nothing else."
)

_ANSWER_GUIDE = (
    "Write:\n"
    "- captions.long: several sentences: the scene, the camera motion, and the interaction with when it "
    "happens.\n"
    "- captions.short: one line describing the scene.\n"
    "- interaction: null unless a clear agent causes a lasting state change. Otherwise agent (e.g. 'the "
    "player', 'a dragon'), action (third-person verb, e.g. 'opens'), object, state_change, text (one "
    "sentence) and instruction (the imperative a player would type, e.g. 'open the door', 'make it snow', "
    "'a dragon appears')."
)


def pick_keyframes(indices: list[int], count: int, onset: int | None) -> list[int]:
    """Positions (into ``indices``) of at most ``count`` keyframes: the frames around the onset first,
    then the ends, then evenly spaced ones; returned in time order."""
    n = len(indices)
    if count <= 0 or n == 0:
        return []
    if n <= count:
        return list(range(n))
    wanted: list[int] = []
    if onset is not None:
        before = [p for p, i in enumerate(indices) if i < onset]
        after = [p for p, i in enumerate(indices) if i >= onset]
        wanted += before[-1:] + after[:1]
    wanted += [0, n - 1]
    wanted += [round(x) for x in np.linspace(0, n - 1, count)]
    chosen: list[int] = []
    for p in wanted:
        if p not in chosen:
            chosen.append(p)
        if len(chosen) == count:
            break
    return sorted(chosen)


class _BadAnswer(ValueError):
    pass


def parse_answer(content: Any) -> tuple[Captions, InteractionCaption | None]:
    """Captions and interaction from a chat message's content (string or list of text parts)."""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise _BadAnswer("empty message content")
    try:
        data = json.loads(strip_fences(content))
    except json.JSONDecodeError as exc:
        raise _BadAnswer(f"content is not JSON ({exc.msg} at {exc.pos})") from exc
    if not isinstance(data, dict):
        raise _BadAnswer(f"expected a JSON object, got {type(data).__name__}")
    captions = data.get("captions")
    if isinstance(captions, dict):
        data["captions"] = {k: v for k, v in captions.items() if k in Captions.model_fields}
    interaction = data.get("interaction")
    if isinstance(interaction, dict):
        interaction = {k: v for k, v in interaction.items() if k in InteractionCaption.model_fields}
        if not any(isinstance(v, str) and v.strip() for v in interaction.values()):
            interaction = None
        data["interaction"] = interaction
    try:
        answer = _ChatAnswer.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise _BadAnswer(f"answer does not match the schema ({problems})") from exc
    long, short = answer.captions.long.strip(), " ".join(answer.captions.short.split())
    if not long or not short:
        raise _BadAnswer("empty long or short caption")
    result = answer.interaction
    if result is not None:
        empty = [k for k, v in result.model_dump().items() if not v.strip()]
        if empty:
            raise _BadAnswer(f"interaction has empty fields: {', '.join(empty)}")
    return Captions(long=long, short=short), result


class ChatCaptioner:
    """Captions from a VLM/LLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Retries connection errors, timeouts, HTTP 429/5xx and unusable answers with exponential backoff
    (honouring ``Retry-After`` up to ``backoff_max_s``); other HTTP errors fail at once. Failure is
    a :class:`CaptionError` naming the endpoint, the attempts made and the last reason.
    """

    def __init__(
        self,
        config: ChatCaptionerConfig,
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.name = f"chat:{config.model}"
        self.url = f"{config.endpoint}/chat/completions"
        self._own_client = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(config.timeout_s), trust_env=config.trust_env
        )
        self._sleep = sleep

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> ChatCaptioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def headers(self) -> dict[str, str]:
        return self.config.headers()

    def build_payload(self, request: CaptionRequest) -> dict[str, Any]:
        """The Chat Completions request body for one clip."""
        cfg = self.config
        candidate = request.interaction
        chosen = pick_keyframes(
            request.frame_indices, cfg.max_frames, candidate.onset_frame if candidate else None
        )
        parts: list[dict[str, Any]] = [{"type": "text", "text": self._prompt(request, chosen)}]
        for pos in chosen:
            jpeg = encode_jpeg(request.frames[pos], cfg.jpeg_quality, cfg.max_image_side)
            url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        payload: dict[str, Any] = {
            "model": cfg.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": parts},
            ],
            "temperature": cfg.temperature,
            "response_format": {"type": "json_object"},
        }
        if cfg.max_tokens is not None:
            payload["max_tokens"] = cfg.max_tokens
        return payload

    def _prompt(self, request: CaptionRequest, chosen: list[int]) -> str:
        fps = request.fps
        source = (request.source_caption or "").replace("\x00", "").strip()[:2000]
        lines = [
            f"Clip {request.clip_id}: {request.num_frames} frames at {fps:g} fps "
            f"({request.num_frames / fps:.2f} s).",
            f"Scraped caption (may be wrong, messy or empty): {json.dumps(source, ensure_ascii=False)}",
            f"Camera motion (measured): {request.camera_motion.strip() or 'unknown'}",
        ]
        candidate = request.interaction
        if candidate is None:
            lines.append("Visual change detector: no lasting non-camera change was found.")
        else:
            if candidate.bbox is None or candidate.global_change:
                where = "over the whole frame"
            else:
                where = f"in box (x0, y0, x1, y1) = {tuple(candidate.bbox)}"
                if request.frame_size is not None:
                    where += f" of a {request.frame_size[0]}x{request.frame_size[1]} frame"
            lines.append(
                f"Visual change detector: a lasting change starts at frame {candidate.onset_frame} "
                f"({candidate.onset_frame / fps:.2f} s) {where}, strength {candidate.score:.3g}."
            )
        if chosen:
            listed = ", ".join(
                f"frame {request.frame_indices[p]} ({request.frame_indices[p] / fps:.2f} s)" for p in chosen
            )
            lines.append(f"Attached images, in time order: {listed}.")
        else:
            lines.append("No images are attached.")
        lines.append(_ANSWER_GUIDE)
        lines.append("JSON schema of the answer: " + json.dumps(_ChatAnswer.model_json_schema()))
        return "\n".join(lines)

    def caption(self, request: CaptionRequest) -> CaptionResult:
        payload = self.build_payload(request)
        attempts = self.config.max_retries + 1
        reason = "no attempt made"
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                response = self._client.post(
                    self.url, json=payload, headers=self.headers(), timeout=self.config.timeout_s
                )
            except httpx.TimeoutException as exc:
                reason = f"timeout after {self.config.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                reason = f"connection error ({type(exc).__name__}: {exc})"
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    reason = f"HTTP {status}: {response_snippet(response)}"
                    retry_after = parse_retry_after(response)
                elif not 200 <= status < 300:
                    reason = f"HTTP {status}: {response_snippet(response)}"
                    raise CaptionError(
                        f"captioning {request.clip_id} via {self.url} failed after {attempt} attempt(s), "
                        f"not retried: {reason}",
                        endpoint=self.url,
                        attempts=attempt,
                        reason=reason,
                    )
                else:
                    try:
                        return self._result(response, request)
                    except _BadAnswer as exc:
                        reason = f"invalid answer: {exc}"
            if attempt < attempts:
                delay = min(self.config.backoff_s * 2 ** (attempt - 1), self.config.backoff_max_s)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.config.backoff_max_s))
                log.warning(
                    "%s: attempt %d/%d for %s failed (%s); retrying in %.2f s",
                    self.name,
                    attempt,
                    attempts,
                    request.clip_id,
                    reason,
                    delay,
                )
                self._sleep(delay)
        raise CaptionError(
            f"captioning {request.clip_id} via {self.url} failed after {attempts} attempt(s): {reason}",
            endpoint=self.url,
            attempts=attempts,
            reason=reason,
        )

    def _result(self, response: httpx.Response, request: CaptionRequest) -> CaptionResult:
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _BadAnswer(f"response body is not JSON: {response_snippet(response)}") from exc
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise _BadAnswer("response has no choices[0].message.content") from exc
        captions, interaction = parse_answer(content)
        if self.config.require_candidate and request.interaction is None:
            interaction = None
        try:
            return CaptionResult(captions=captions, interaction=interaction, captioner=self.name)
        except ValidationError as exc:
            raise _BadAnswer(str(exc).replace("\n", " ")) from exc
