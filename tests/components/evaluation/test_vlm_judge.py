"""The VLM judge against a real local HTTP server speaking the Chat Completions protocol: what each
request carries, how answers map to scores, and how bad answers and a failing endpoint are handled."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from typing import Any

import numpy as np
import pytest
from chat_endpoint import Reply, Script, Sent, chat_server, endpoint_fields, refused_url
from PIL import Image
from pydantic import ValidationError

from worldloop.components.evaluation.judges import (
    ANSWER_FORMATS,
    DIMENSIONS,
    QUESTIONS,
    SYSTEM_PROMPT,
    Dimension,
    Judge,
    VLMJudge,
    VLMJudgeConfig,
    VLMJudgeError,
)
from worldloop.components.evaluation.judges.vlm import camera_summary, sample_frames
from worldloop.components.evaluation.suite import InterBenchCase

H, W, F = 32, 48, 9
CASE = InterBenchCase.model_validate(
    {
        "id": "door_1",
        "category": "character_action",
        "prompt": "a stone hall with a wooden door",
        "instruction": "open the door",
        "instruction_frame": 4,
        "frames": F,
        "actions": [{"keys": "w"}] * 5 + [{"keys": "w", "mouse": (2.0, 0.0)}] * 4,
    }
)
# Frame i is flat grey 10 + 25 i, so a decoded JPEG names the frame it came from.
VIDEO = np.stack([np.full((H, W, 3), 10 + 25 * i, np.uint8) for i in range(F)])
GOOD = {
    Dimension.trigger: {"answer": "yes", "reason": "The door opens."},
    Dimension.alignment: {"rating": 7, "reason": "It opens, a little too far."},
    Dimension.fluency: {"rating": 9, "reason": "Smooth."},
    Dimension.scope: {"rating": 4, "reason": "The wall changes too."},
    Dimension.end_state: {"answer": "partly", "reason": "It half closes again."},
    Dimension.physics: {"rating": 10, "reason": "It swings on its hinges."},
}
EXPECTED = {
    Dimension.trigger: 1.0,
    Dimension.alignment: 0.7,
    Dimension.fluency: 0.9,
    Dimension.scope: 0.4,
    Dimension.end_state: 0.5,
    Dimension.physics: 1.0,
}


# -- the local Chat Completions server (tests/chat_endpoint.py) -----------------------------------------
def dimension(sent: Sent) -> Dimension:
    """The dimension a request asks about."""
    text = sent.body["messages"][1]["content"][0]["text"]
    found = re.search(r"^Question \((\w+)\):", text, re.MULTILINE)
    assert found, text
    return Dimension(found.group(1))


def answers(by_dim: dict[Dimension, Any]) -> Script:
    """A script that answers each question with ``by_dim[dimension]`` (a JSON value or raw text)."""

    def reply(n: int, sent: Sent) -> Reply:
        value = by_dim[dimension(sent)]
        return Reply(content=value if isinstance(value, str) else json.dumps(value))

    return reply


def config(url: str, **overrides: Any) -> VLMJudgeConfig:
    fields = endpoint_fields(url, api_key="sk-judge", frames_per_question=5, max_retries=2, answer_retries=2)
    return VLMJudgeConfig.model_validate(fields | overrides)


def judge(url: str, **overrides: Any) -> VLMJudge:
    return VLMJudge(config(url, **overrides), sleep=lambda s: None)


# -- tests ----------------------------------------------------------------------------------------------
def test_requests_carry_frames_instruction_and_one_question_per_dimension() -> None:
    with chat_server(answers(GOOD)) as (url, received), judge(url + "/chat/completions/") as vlm:
        typed: Judge = vlm  # satisfies the protocol
        result = typed.score(CASE, VIDEO)
    assert vlm.name == "vlm:test-vlm" and vlm.url == url + "/chat/completions"
    assert result.case == "door_1" and result.category == "character_action"
    assert result.scores == pytest.approx(EXPECTED)
    assert "scope: 4/10: The wall changes too." in result.notes
    assert "end_state: partly: It half closes again." in result.notes

    assert [dimension(a) for a in received] == list(DIMENSIONS)
    for asked in received:
        assert asked.path == "/v1/chat/completions" and asked.authorization == "Bearer sk-judge"
        body = asked.body
        assert body["model"] == "test-vlm" and body["temperature"] == 0.0
        assert body["response_format"] == {"type": "json_object"}
        system, user = body["messages"]
        assert system == {"role": "system", "content": SYSTEM_PROMPT}
        text, *parts = user["content"]
        for needle in (
            '"open the door"',
            "issued at frame 4",
            '"a stone hall with a wooden door"',
            "frames 1-4: move forward; frames 5-8: move forward and turn right",
            "Attached frames, in time order: 0, 2, 4, 6, 8.",
            QUESTIONS[dimension(asked)],
            ANSWER_FORMATS[dimension(asked)],
        ):
            assert needle in text["text"]
        labels, images = parts[0::2], parts[1::2]
        assert len(images) == 5  # frames_per_question, reference, instruction and last frame included
        assert [p["type"] for p in labels] == ["text"] * 5
        assert labels[0]["text"] == "Frame 0 (the reference image, before the instruction):"
        assert labels[2]["text"] == "Frame 4 (the instruction is issued here):"
        assert labels[4]["text"] == "Frame 8 (after the instruction, the last frame):"
        shown = []
        for part in images:
            assert part["type"] == "image_url"
            head, data = part["image_url"]["url"].split(",", 1)
            assert head == "data:image/jpeg;base64"
            with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as img:
                assert img.format == "JPEG" and img.size == (W, H) and img.mode == "RGB"
                shown.append(round((float(np.asarray(img).mean()) - 10) / 25))
        assert shown == [0, 2, 4, 6, 8]


def test_answers_are_normalised_and_fences_tolerated() -> None:
    loose = dict(GOOD)
    loose[Dimension.trigger] = 'Sure:\n```json\n{"answer": " No ", "reason": "nothing"}\n```'
    loose[Dimension.alignment] = {"rating": 2.5, "reason": "barely", "extra": 1}
    loose[Dimension.fluency] = "Here it is: " + json.dumps({"rating": "6"})  # reason optional, text around
    with chat_server(answers(loose)) as (url, received), judge(url) as vlm:
        result = vlm.score(CASE, VIDEO)
    assert len(received) == 6
    assert result.scores[Dimension.trigger] == 0.0
    assert result.scores[Dimension.alignment] == pytest.approx(0.25)
    assert result.scores[Dimension.fluency] == pytest.approx(0.6)


def test_malformed_answer_is_asked_again_with_the_problem() -> None:
    tries: dict[Dimension, int] = {}

    def script(n: int, asked: Sent) -> Reply:
        dim = dimension(asked)
        tries[dim] = tries.get(dim, 0) + 1
        if dim is Dimension.alignment and tries[dim] == 1:
            return Reply(content="The door opens, I'd say 7 {not json")
        if dim is Dimension.scope and tries[dim] == 1:
            return Reply(content=json.dumps({"rating": 14}))  # valid JSON, breaks the schema
        return Reply(content=json.dumps(GOOD[dim]))

    with chat_server(script) as (url, received), judge(url) as vlm:
        result = vlm.score(CASE, VIDEO)
    assert result.scores == pytest.approx(EXPECTED)
    assert len(received) == 8 and tries[Dimension.alignment] == tries[Dimension.scope] == 2
    first, retry = (a for a in received if dimension(a) is Dimension.alignment)
    system, user, said, repair = retry.body["messages"]
    assert [system, user] == first.body["messages"]  # the same question and frames
    assert said == {"role": "assistant", "content": "The door opens, I'd say 7 {not json"}
    assert repair["role"] == "user" and "not JSON" in repair["content"]
    assert ANSWER_FORMATS[Dimension.alignment] in repair["content"]
    scope_retry = [a for a in received if dimension(a) is Dimension.scope][1]
    assert "rating" in scope_retry.body["messages"][-1]["content"]
    assert "less than or equal to 10" in scope_retry.body["messages"][-1]["content"]


def test_always_unusable_answer_scores_none_with_a_note() -> None:
    bad = dict(GOOD)
    bad[Dimension.physics] = json.dumps({"verdict": "plausible"})
    bad[Dimension.trigger] = "maybe"
    with chat_server(answers(bad)) as (url, received), judge(url, answer_retries=1) as vlm:
        result = vlm.score(CASE, VIDEO)
    assert len(received) == 4 + 2 * 2  # answer_retries + 1 tries for the two bad dimensions
    assert result.scores[Dimension.physics] is None and result.scores[Dimension.trigger] is None
    assert result.scores[Dimension.alignment] == pytest.approx(0.7)
    (note,) = [n for n in result.notes if n.startswith("physics")]
    assert "no usable answer after 2 attempt(s)" in note and "rating: Field required" in note
    (note,) = [n for n in result.notes if n.startswith("trigger")]
    assert "not JSON" in note


def test_server_errors_are_retried_with_backoff() -> None:
    def script(n: int, asked: Sent) -> Reply:
        if n in (1, 2):
            return Reply(status=500 if n == 1 else 429, raw=b"overloaded")
        if n == 3:
            return Reply(raw=b"<html>not json</html>")  # 200 with a broken body: an unusable answer
        return Reply(content=json.dumps(GOOD[dimension(asked)]))

    delays: list[float] = []
    with chat_server(script) as (url, received), VLMJudge(config(url), sleep=delays.append) as vlm:
        result = vlm.score(CASE, VIDEO)
    assert result.scores == pytest.approx(EXPECTED)
    assert len(received) == 6 + 3
    assert delays == pytest.approx([0.01, 0.02])  # exponential backoff; a bad answer is re-asked at once


def test_persistent_server_error_fails_loudly_naming_the_endpoint() -> None:
    with (
        chat_server(lambda n, a: Reply(status=503, raw=b"model loading")) as (url, received),
        judge(url, max_retries=2) as vlm,
        pytest.raises(VLMJudgeError) as err,
    ):
        vlm.score(CASE, VIDEO)
    assert len(received) == 3
    message = str(err.value)
    assert f"{url}/chat/completions" in message and "3 attempt(s)" in message
    assert "HTTP 503: model loading" in message and "case door_1, trigger" in message
    assert err.value.endpoint == f"{url}/chat/completions" and err.value.attempts == 3


def test_client_error_is_not_retried() -> None:
    with (
        chat_server(lambda n, a: Reply(status=404, raw=b'{"error": "no such model"}')) as (url, received),
        judge(url) as vlm,
        pytest.raises(VLMJudgeError, match="not retried: HTTP 404.*no such model"),
    ):
        vlm.score(CASE, VIDEO)
    assert len(received) == 1


def test_endpoint_down_or_too_slow_raises() -> None:
    down = refused_url()
    with judge(down, max_retries=1) as vlm, pytest.raises(VLMJudgeError, match="connection error") as err:
        vlm.score(CASE, VIDEO)
    assert down in str(err.value) and err.value.attempts == 2

    started = time.perf_counter()
    with chat_server(lambda n, a: Reply(content="{}", delay_s=3.0)) as (url, received):
        with judge(url, timeout_s=0.2, max_retries=1) as vlm, pytest.raises(VLMJudgeError) as err:
            vlm.score(CASE, VIDEO)
        assert len(received) == 2
    assert time.perf_counter() - started < 2.5
    assert "timeout after 0.2 s" in str(err.value) and url in str(err.value)


@pytest.mark.parametrize(
    ("frames", "instruction", "count", "expected"),
    [
        (9, 4, 5, [0, 2, 4, 6, 8]),
        (9, 3, 3, [0, 3, 8]),
        (33, 10, 8, [0, 5, 10, 14, 18, 23, 27, 32]),  # 9 → 10: the nearest sample moves onto it
        (6, 1, 8, [0, 1, 2, 3, 4, 5]),  # fewer frames than asked: all of them
        (93, 92, 4, [0, 31, 61, 92]),
    ],
)
def test_sample_frames(frames: int, instruction: int, count: int, expected: list[int]) -> None:
    assert sample_frames(frames, instruction_frames=[instruction], count=count) == expected


@pytest.mark.parametrize("frames", [4, 9, 17, 33, 93])
@pytest.mark.parametrize("count", [3, 4, 8, 12])
def test_sample_frames_always_keeps_reference_instruction_and_last(frames: int, count: int) -> None:
    for instruction in range(1, frames):
        picked = sample_frames(frames, instruction_frames=[instruction], count=count)
        assert len(picked) == min(frames, count) and picked == sorted(set(picked))
        assert {0, instruction, frames - 1} <= set(picked)


def test_config_video_and_key_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="http"):
        config("vlm:8000/v1")
    with pytest.raises(ValidationError, match="extra"):
        config("http://vlm/v1", retries=3)
    with pytest.raises(ValidationError, match="frames_per_question"):
        config("http://vlm/v1", frames_per_question=2)
    assert "sk-judge" not in repr(config("http://vlm/v1"))
    monkeypatch.setenv("WL_TEST_JUDGE_KEY", "from-env")
    assert config("http://vlm/v1", api_key=None, api_key_env="WL_TEST_JUDGE_KEY").resolved_api_key() == (
        "from-env"
    )
    assert config("http://vlm/v1", api_key=None).resolved_api_key() is None
    with judge("http://127.0.0.1:9/v1") as vlm:
        with pytest.raises(ValueError, match="wants 9 frames"):
            vlm.score(CASE, VIDEO[:5])
        with pytest.raises(ValueError, match="uint8 RGB"):
            vlm.score(CASE, VIDEO.astype(np.float32))
    with pytest.raises(ValueError, match="outside"):
        sample_frames(9, instruction_frames=[9], count=4)
    still = CASE.model_copy(update={"actions": CASE.actions[:1] * F})
    assert camera_summary(still) == "frames 1-8: move forward"
