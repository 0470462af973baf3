"""A VLM/LLM captioner behind an OpenAI-compatible Chat Completions endpoint: keyframes as JPEG
data URLs, a validated JSON answer; HTTP and its retries are :class:`worldloop.platform.chat.ChatClient`'s."""

from __future__ import annotations

import json
import logging
from typing import Any

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
from worldloop.data import Captions, InteractionCaption
from worldloop.platform.chat import (
    ChatClient,
    ChatEndpointConfig,
    UnusableAnswer,
    jpeg_data_url,
    json_object,
    message_text,
)

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


def parse_answer(text: str) -> tuple[Captions, InteractionCaption | None]:
    """Captions and interaction from the text of a chat answer; raises :class:`UnusableAnswer`."""
    data = json_object(text)
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
        raise UnusableAnswer(f"answer does not match the schema ({problems})") from exc
    long, short = answer.captions.long.strip(), " ".join(answer.captions.short.split())
    if not long or not short:
        raise UnusableAnswer("empty long or short caption")
    result = answer.interaction
    if result is not None:
        empty = [k for k, v in result.model_dump().items() if not v.strip()]
        if empty:
            raise UnusableAnswer(f"interaction has empty fields: {', '.join(empty)}")
    return Captions(long=long, short=short), result


class ChatCaptioner(ChatClient[ChatCaptionerConfig]):
    """Captions from a VLM/LLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    HTTP is :class:`ChatClient`'s (connection errors, timeouts and HTTP 408/429/5xx retried with backoff,
    other HTTP errors at once; see :mod:`worldloop.platform.chat`); when it gives up the clip fails with
    a :class:`CaptionError` at once. An unusable answer (not JSON, off the schema) is sent again at once,
    without backoff (waiting does not mend an answer): a clip gets at most ``max_retries + 1`` answers,
    each of which may itself take up to ``max_retries`` HTTP retries; after the last unusable one the
    :class:`CaptionError` names the endpoint, the answers asked for and why.
    """

    kind = "chat"
    error = CaptionError

    def build_payload(self, request: CaptionRequest) -> dict[str, Any]:
        """The Chat Completions request body for one clip."""
        cfg = self.config
        candidate = request.interaction
        chosen = pick_keyframes(
            request.frame_indices, cfg.max_frames, candidate.onset_frame if candidate else None
        )
        parts: list[dict[str, Any]] = [{"type": "text", "text": self._prompt(request, chosen)}]
        for pos in chosen:
            url = jpeg_data_url(request.frames[pos], cfg.jpeg_quality, cfg.max_image_side)
            parts.append({"type": "image_url", "image_url": {"url": url}})
        return self.request_body(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": parts}]
        )

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
        what = f"captioning {request.clip_id}"
        attempts = self.config.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._result(self.complete(payload, what=what), request)
            except UnusableAnswer as exc:
                reason = f"invalid answer: {exc}"
            log.warning("%s: %s: answer %d/%d unusable: %s", self.name, what, attempt, attempts, reason)
        raise self.failure(what, attempts=attempts, reason=reason)

    def _result(self, body: dict[str, Any], request: CaptionRequest) -> CaptionResult:
        captions, interaction = parse_answer(message_text(body))
        if self.config.require_candidate and request.interaction is None:
            interaction = None
        try:
            return CaptionResult(captions=captions, interaction=interaction, captioner=self.name)
        except ValidationError as exc:
            raise UnusableAnswer(str(exc).replace("\n", " ")) from exc
