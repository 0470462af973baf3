"""The VLM judge of InterBench: one question per dimension to a vision-language model behind an
OpenAI-compatible Chat Completions endpoint (DESIGN.md §7).

Per case, ``frames_per_question`` frames are sampled evenly from the generated video, always including
frame 0 (the reference image), the frame the instruction is issued at and the last frame; they go out
as JPEG data URLs, each labelled with its frame index. Each dimension is one request: the system prompt,
then the case (scene, instruction and its frame, camera inputs), the dimension's question and answer
format, and the frames. The answer must be a JSON object; a pydantic model validates it and maps it to
[0, 1] deterministically:

==========  ==========================================  ============================================
dimension   answer                                      score
==========  ==========================================  ============================================
trigger     ``{"answer": "yes" | "no", "reason"}``      yes 1, no 0
alignment   ``{"rating": 0..10, "reason"}``             rating / 10
fluency     ``{"rating": 0..10, "reason"}``             rating / 10
scope       ``{"rating": 0..10, "reason"}``             rating / 10
end_state   ``{"answer": "yes" | "partly" | "no", …}``  yes 1, partly 0.5, no 0
physics     ``{"rating": 0..10, "reason"}``             rating / 10
==========  ==========================================  ============================================

The questions (:data:`QUESTIONS`), the answer formats (:data:`ANSWER_FORMATS`) and the system prompt
(:data:`SYSTEM_PROMPT`) are module constants so that reports can show exactly what was asked.

Failures: an answer that is not JSON or breaks the schema is asked again (the model sees its answer
and what was wrong with it) up to ``answer_retries`` times; then the dimension scores ``None`` with a
note. Connection errors, timeouts and HTTP 408/429/5xx are retried with exponential backoff up to
``max_retries`` times, then — like any other HTTP error, which is not retried — raise
:class:`VLMJudgeError` naming the endpoint: a judge that is down fails the run, it does not score 0.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from worldloop.components.curation.captioning import encode_jpeg
from worldloop.components.evaluation.judges.base import DIMENSIONS, CaseScores, Dimension
from worldloop.components.evaluation.suite import InterBenchCase

log = logging.getLogger(__name__)


class VLMJudgeConfig(BaseModel):
    """Where and how to ask the vision-language model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(description="Base URL of the OpenAI-compatible API, e.g. http://vlm:8000/v1.")
    model: str = Field(min_length=1, description="Model name sent with every request.")
    api_key: SecretStr | None = Field(None, description="Bearer token; overrides api_key_env.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable read for the key when api_key is unset."
    )
    frames_per_question: int = Field(
        8, ge=3, le=32, description="Frames attached to each question (reference, instruction, last + even)."
    )
    max_image_side: int = Field(512, ge=16, description="Longer image side is scaled down to this.")
    jpeg_quality: int = Field(90, ge=1, le=100)
    timeout_s: float = Field(60.0, gt=0, description="Per-request connect/read/write timeout.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a failed HTTP request (then raise).")
    answer_retries: int = Field(2, ge=0, le=10, description="Re-asks after an unusable answer (then None).")
    backoff_s: float = Field(1.0, ge=0, description="First HTTP retry delay; doubles on each retry.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest delay between HTTP attempts.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 keeps the judge (near) deterministic.")
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


class VLMJudgeError(RuntimeError):
    """The judge endpoint could not be reached or refused the request (after retries where retried)."""

    def __init__(self, message: str, *, endpoint: str, attempts: int, reason: str) -> None:
        super().__init__(message)
        self.endpoint, self.attempts, self.reason = endpoint, attempts, reason


# -- what is asked --------------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "You judge videos generated by an interactive game world model for the InterBench benchmark. The "
    "model was given a reference image (frame 0), a scene description and a script of camera inputs, and "
    "at a given frame a player's instruction to perform an interaction: an action that triggers a state "
    "change in the scene. Interactions are environment changes (snow, rain, nightfall, an explosion), "
    "character actions (opening a door, drawing a torch, shooting) or entities appearing (a dragon, a "
    "vehicle, a person). Camera motion that follows the inputs is expected and is never the interaction "
    "itself. Judge only what the frames show, strictly and consistently. Answer with a single JSON object "
    "and nothing else."
)

QUESTIONS: dict[Dimension, str] = {
    Dimension.trigger: (
        "Does the instructed interaction happen after the instruction is issued: is the change the "
        "instruction asks for visible in the later frames? A clearly visible attempt counts; camera "
        "motion alone does not."
    ),
    Dimension.alignment: (
        "How well does what happens after the instruction match the instruction? 10: exactly the "
        "instructed change, to the right object and of the right kind; 5: a related change that is "
        "incomplete or partly different; 0: no change, an unrelated change, or frames that no longer "
        "show the scene."
    ),
    Dimension.fluency: (
        "How smooth is the video from the instruction to the last frame? 10: every frame follows "
        "naturally from the one before, as the camera inputs and the event imply; 5: some flicker, "
        "stutter or a visible jump; 0: heavy flicker, cuts, or objects popping in and out. Judge "
        "smoothness only, not whether the instruction was followed."
    ),
    Dimension.scope: (
        "Does the change stay where it belongs? A local interaction (a character action, an entity "
        "appearing, an explosion) should change only the affected object or region and leave the rest "
        "of the scene as it was; a global change (weather, lighting, time of day) should change the whole "
        "view consistently. 10: exactly the right extent; 5: spills over unrelated parts of the scene, or "
        "covers only part of what it should; 0: no change, or the whole scene changes for a local "
        "interaction."
    ),
    Dimension.end_state: (
        "Once the interaction has happened, does its end state persist to the last frame (the door stays "
        "open, the snow keeps falling, the dragon stays in the scene)? yes: it persists to the last "
        "frame; partly: it fades, flickers back or changes in some frames; no: it reverts or vanishes, or "
        "the interaction never happens."
    ),
    Dimension.physics: (
        "Does the change unfold in a physically and logically plausible way? 10: it develops as the real "
        "event would (a door swings on its hinges, snow builds up, an entity enters or emerges rather "
        "than popping in), objects keep their shape and size and the lighting stays consistent; 5: "
        "partly plausible, with visible artefacts; 0: implausible (things pop in at once, overshoot, "
        "deform or fade back), or no change happens."
    ),
}

REPAIR_PROMPT = "Your answer could not be used ({problem}). Answer again with only this JSON object: {format}"


class DimensionAnswer(BaseModel):
    """A dimension's answer; ``score`` maps it to [0, 1]."""

    model_config = ConfigDict(extra="ignore")
    FORMAT: ClassVar[str]

    reason: str = Field("", description="One sentence: why.")

    def score(self) -> float:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class YesNoAnswer(DimensionAnswer):
    FORMAT: ClassVar[str] = '{"answer": "yes" or "no", "reason": "<one sentence>"}'
    answer: Literal["yes", "no"]
    _norm = field_validator("answer", mode="before")(_lower)

    def score(self) -> float:
        return 1.0 if self.answer == "yes" else 0.0

    def summary(self) -> str:
        return self.answer


class YesPartlyNoAnswer(DimensionAnswer):
    FORMAT: ClassVar[str] = '{"answer": "yes", "partly" or "no", "reason": "<one sentence>"}'
    answer: Literal["yes", "partly", "no"]
    _norm = field_validator("answer", mode="before")(_lower)

    def score(self) -> float:
        return {"yes": 1.0, "partly": 0.5, "no": 0.0}[self.answer]

    def summary(self) -> str:
        return self.answer


class RatingAnswer(DimensionAnswer):
    FORMAT: ClassVar[str] = '{"rating": <integer from 0 to 10>, "reason": "<one sentence>"}'
    rating: float = Field(ge=0, le=10, allow_inf_nan=False)

    @field_validator("rating", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("rating must be a number from 0 to 10, not a boolean")
        return value

    def score(self) -> float:
        return self.rating / 10.0

    def summary(self) -> str:
        return f"{self.rating:g}/10"


ANSWERS: dict[Dimension, type[DimensionAnswer]] = {
    Dimension.trigger: YesNoAnswer,
    Dimension.alignment: RatingAnswer,
    Dimension.fluency: RatingAnswer,
    Dimension.scope: RatingAnswer,
    Dimension.end_state: YesPartlyNoAnswer,
    Dimension.physics: RatingAnswer,
}
ANSWER_FORMATS: dict[Dimension, str] = {dim: answer.FORMAT for dim, answer in ANSWERS.items()}


class _BadAnswer(ValueError):
    pass


def parse_answer(content: object, *, dimension: Dimension) -> DimensionAnswer:
    """The validated answer in a message's content (a string, or a list of text parts); code fences
    and text around the JSON object are tolerated. Raises ValueError saying what is wrong."""
    text = _message_text(content).strip()
    if not text:
        raise _BadAnswer("empty message content")
    fenced = re.search(r"```(?:json|JSON)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    elif not text.startswith("{") and "{" in text and "}" in text:
        text = text[text.index("{") : text.rindex("}") + 1]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadAnswer(f"not JSON: {exc.msg} at {exc.pos}") from exc
    if not isinstance(data, dict):
        raise _BadAnswer(f"expected a JSON object, got {type(data).__name__}")
    try:
        return ANSWERS[dimension].model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in exc.errors())
        raise _BadAnswer(f"does not match the schema ({problems})") from exc


def _message_text(content: object) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


# -- what is shown --------------------------------------------------------------------------------------
def sample_frames(num_frames: int, *, instruction_frame: int, count: int) -> list[int]:
    """``count`` frame indices evenly spread over the video, sorted, with 0, ``instruction_frame`` and
    the last frame always among them (all frames when there are no more than ``count``)."""
    if count < 3:
        raise ValueError(f"count must be ≥ 3 (reference, instruction and last frame), got {count}")
    if not 0 <= instruction_frame < num_frames:
        raise ValueError(f"instruction_frame {instruction_frame} is outside a {num_frames}-frame video")
    if num_frames <= count:
        return list(range(num_frames))
    # floor(x + 0.5), not round(): half-to-even could map two neighbours to one frame.
    picked = [math.floor(x + 0.5) for x in np.linspace(0, num_frames - 1, count)]
    if instruction_frame not in picked:
        # The nearest interior sample moves onto it; no sample lies in between, so the order holds.
        nearest = min(range(1, count - 1), key=lambda i: abs(picked[i] - instruction_frame))
        picked[nearest] = instruction_frame
    return picked


def _frame_label(index: int, case: InterBenchCase, last: int) -> str:
    tags = []
    if index == 0:
        tags.append("the reference image")
    if index == case.instruction_frame:
        tags.append("the instruction is issued here")
    elif index > case.instruction_frame:
        tags.append("after the instruction")
    else:
        tags.append("before the instruction")
    if index == last:
        tags.append("the last frame")
    return f"Frame {index} ({', '.join(tags)}):"


_MOVES = {"w": "forward", "s": "back", "a": "left", "d": "right", "space": "up"}


def camera_summary(case: InterBenchCase, *, max_runs: int = 8) -> str:
    """The action script as runs of frames, e.g. 'frames 1-8: move forward; frames 9-16: turn left'."""
    words: list[str] = []
    for action in case.actions[1:]:  # action 0 is ignored (frame 0 is the reference image)
        parts = [f"move {_MOVES[k]}" for k in action.keys.split("+") if k in _MOVES]
        dx, dy = action.mouse
        if dx:
            parts.append("turn right" if dx > 0 else "turn left")
        if dy:
            parts.append("look down" if dy > 0 else "look up")
        words.append(" and ".join(parts) or "hold still")
    runs: list[tuple[int, int, str]] = []
    for frame, what in enumerate(words, start=1):
        if runs and runs[-1][2] == what:
            runs[-1] = (runs[-1][0], frame, what)
        else:
            runs.append((frame, frame, what))
    text = "; ".join(f"frame {a}: {w}" if a == b else f"frames {a}-{b}: {w}" for a, b, w in runs[:max_runs])
    return text + ("; …" if len(runs) > max_runs else "")


def question_prompt(case: InterBenchCase, *, dimension: Dimension, indices: list[int]) -> str:
    """The user text of one question (the frames follow it as labelled images)."""
    listed = ", ".join(str(i) for i in indices)
    category = case.category.value.replace("_", " ")
    return "\n".join(
        [
            f"Case {case.id} ({category}), {case.frames} frames (0-{case.frames - 1}).",
            f"Scene description: {json.dumps(case.prompt, ensure_ascii=False)}",
            f"Camera inputs: {camera_summary(case)}.",
            f"Instruction, issued at frame {case.instruction_frame}: "
            f"{json.dumps(case.instruction, ensure_ascii=False)}",
            f"Attached frames, in time order: {listed}.",
            "",
            f"Question ({dimension.value}): {QUESTIONS[dimension]}",
            f"Answer with only this JSON object: {ANSWER_FORMATS[dimension]}",
        ]
    )


# -- the judge ------------------------------------------------------------------------------------------
class VLMJudge:
    """Scores a generated video by asking a VLM one question per InterBench dimension (module docstring)."""

    def __init__(
        self,
        cfg: VLMJudgeConfig,
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.name = f"vlm:{cfg.model}"
        self.url = f"{cfg.endpoint}/chat/completions"
        self._api_key = cfg.resolved_api_key()
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(cfg.timeout_s), trust_env=cfg.trust_env)
        self._sleep = sleep

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> VLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def score(self, case: InterBenchCase, video: np.ndarray) -> CaseScores:
        """Six questions about ``video`` (F, H, W, 3) uint8 RGB, F = ``case.frames``."""
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"video must be (F, H, W, 3) uint8 RGB, got {video.dtype} {video.shape}")
        if len(video) != case.frames:
            raise ValueError(f"case {case.id} wants {case.frames} frames, the video has {len(video)}")
        indices = sample_frames(
            len(video), instruction_frame=case.instruction_frame, count=self.cfg.frames_per_question
        )
        frames: list[dict[str, Any]] = []  # encoded once, sent with every question
        for i in indices:
            jpeg = encode_jpeg(video[i], self.cfg.jpeg_quality, self.cfg.max_image_side)
            url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
            frames.append({"type": "text", "text": _frame_label(i, case, len(video) - 1)})
            frames.append({"type": "image_url", "image_url": {"url": url}})
        scores: dict[Dimension, float | None] = {}
        notes: list[str] = []
        for dim in DIMENSIONS:
            text = question_prompt(case, dimension=dim, indices=indices)
            prompt = [{"type": "text", "text": text}, *frames]
            answer, note = self._ask(case, dim, prompt)
            scores[dim] = None if answer is None else answer.score()
            notes.append(note)
        return CaseScores(case=case.id, category=case.category.value, scores=scores, notes=notes)

    def _ask(
        self, case: InterBenchCase, dim: Dimension, prompt: list[dict[str, Any]]
    ) -> tuple[DimensionAnswer | None, str]:
        """The validated answer and a note; (None, why) when every answer was unusable."""
        question: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        messages, attempts, problem = question, self.cfg.answer_retries + 1, ""
        what = f"case {case.id}, {dim.value}"
        for attempt in range(1, attempts + 1):
            response = self._complete(messages, what)
            content: object = None
            try:
                content = _content(response)
                answer = parse_answer(content, dimension=dim)
            except _BadAnswer as exc:
                problem = str(exc)
                log.warning("%s: %s: answer %d/%d unusable: %s", self.name, what, attempt, attempts, problem)
                said = _message_text(content).strip()
                repair = REPAIR_PROMPT.format(problem=problem, format=ANSWER_FORMATS[dim])
                messages = question + ([{"role": "assistant", "content": said[:2000]}] if said else [])
                messages += [{"role": "user", "content": repair}]
                continue
            return answer, f"{dim.value}: {answer.summary()}: {' '.join(answer.reason.split())[:160]}"
        return None, f"{dim.value}: no usable answer after {attempts} attempt(s): {problem}"

    def _complete(self, messages: list[dict[str, Any]], what: str) -> httpx.Response:
        """One chat completion's 2xx response. Retries connection errors, timeouts and HTTP 408/429/5xx
        with backoff (honouring ``Retry-After``), then raises :class:`VLMJudgeError`; other HTTP errors
        raise at once."""
        payload: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "response_format": {"type": "json_object"},
        }
        if self.cfg.max_tokens is not None:
            payload["max_tokens"] = self.cfg.max_tokens
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts, reason = self.cfg.max_retries + 1, ""
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                response = self._client.post(self.url, json=payload, headers=headers)
            except httpx.TimeoutException as exc:
                reason = f"timeout after {self.cfg.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                reason = f"connection error ({type(exc).__name__}: {exc})"
            else:
                if response.is_success:
                    return response
                reason = f"HTTP {response.status_code}: {_snippet(response)}"
                if response.status_code not in (408, 429) and response.status_code < 500:
                    raise VLMJudgeError(
                        f"VLM judge: {what} via {self.url} failed, not retried: {reason}",
                        endpoint=self.url,
                        attempts=attempt,
                        reason=reason,
                    )
                retry_after = _retry_after(response)
            if attempt < attempts:
                delay = min(self.cfg.backoff_s * 2 ** (attempt - 1), self.cfg.backoff_max_s)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.cfg.backoff_max_s))
                log.warning(
                    "%s: %s: attempt %d/%d failed (%s); retry in %.2f s",
                    what,
                    self.url,
                    attempt,
                    attempts,
                    reason,
                    delay,
                )
                self._sleep(delay)
        raise VLMJudgeError(
            f"VLM judge: {what} via {self.url} failed after {attempts} attempt(s): {reason}",
            endpoint=self.url,
            attempts=attempts,
            reason=reason,
        )


def _content(response: httpx.Response) -> object:
    try:
        body = response.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _BadAnswer(f"response body is not JSON: {_snippet(response)}") from exc
    try:
        return body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise _BadAnswer("response has no choices[0].message.content") from exc


# Small copies of curation/captioning/chat.py's private helpers (shared code would live there).
def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = " ".join(response.text.split()) if response.content else ""
    return (text[:limit] + "…") if len(text) > limit else (text or "<empty body>")


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", "nan"))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
