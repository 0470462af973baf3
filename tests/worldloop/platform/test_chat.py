"""The platform's Chat Completions client against a real local HTTP server (tests/chat_endpoint.py):
what a request carries, the one retry policy (which failures are retried, the backoff sequence,
``Retry-After``) and the :class:`ChatError` it fails with."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from typing import Any

import httpx
import numpy as np
import pytest
from chat_endpoint import Reply, Sent, chat_server, endpoint_fields, refused_url
from PIL import Image

from worldloop.platform import chat
from worldloop.platform.chat import ChatClient, ChatError, UnusableAnswer, message_text

ANSWER = json.dumps({"answer": "yes"})
MESSAGES = [{"role": "user", "content": "Is it raining?"}]


def config(url: str, **overrides: Any) -> chat.ChatEndpointConfig:
    fields = endpoint_fields(url, api_key="sk-chat", max_retries=3, backoff_s=0.5, backoff_max_s=3.0)
    return chat.ChatEndpointConfig.model_validate(fields | overrides)


def ok(n: int, sent: Sent) -> Reply:
    return Reply(content=ANSWER)


def complete(url: str, **overrides: Any) -> tuple[dict[str, Any], list[float]]:
    """The body of one completion of MESSAGES and the waits the client asked for."""
    delays: list[float] = []
    with ChatClient(config(url, **overrides), sleep=delays.append) as client:
        return client.complete(client.request_body(MESSAGES), what="asking about rain"), delays


def failure(url: str, **overrides: Any) -> tuple[ChatError, list[float]]:
    """The error one completion of MESSAGES fails with and the waits before it."""
    delays: list[float] = []
    with (
        ChatClient(config(url, **overrides), sleep=delays.append) as client,
        pytest.raises(ChatError) as err,
    ):
        client.complete(client.request_body(MESSAGES), what="asking about rain")
    return err.value, delays


def test_request_carries_model_key_and_json_format_and_returns_the_body() -> None:
    with chat_server(ok) as (url, received):
        body, delays = complete(url + "/chat/completions/", max_tokens=64, temperature=0.5)
    assert message_text(body) == ANSWER and body["object"] == "chat.completion" and delays == []
    (sent,) = received
    assert sent.path == "/v1/chat/completions" and sent.authorization == "Bearer sk-chat"
    assert sent.content_type == "application/json"
    assert sent.body == {
        "model": "test-vlm",
        "messages": MESSAGES,
        "temperature": 0.5,
        "response_format": {"type": "json_object"},
        "max_tokens": 64,
    }


def test_429_honours_retry_after_up_to_the_cap() -> None:
    script = {
        1: Reply(status=429, raw=b"slow down", headers={"Retry-After": "2"}),
        2: Reply(status=429, raw=b"slow down", headers={"Retry-After": "120"}),  # capped at 3 s
        3: Reply(status=429, raw=b"slow down", headers={"Retry-After": "soon"}),  # not seconds: ignored
    }
    with chat_server(lambda n, sent: script.get(n, Reply(content=ANSWER))) as (url, received):
        body, delays = complete(url)
    assert len(received) == 4 and message_text(body) == ANSWER
    assert delays == pytest.approx([2.0, 3.0, 2.0])  # max(backoff, Retry-After), both ≤ backoff_max_s


def test_persistent_503_backs_off_exponentially_then_fails_with_the_fields() -> None:
    with chat_server(lambda n, sent: Reply(status=503, raw=b"model  loading\n")) as (url, received):
        err, delays = failure(url)
    assert len(received) == 4  # max_retries + 1
    assert delays == pytest.approx([0.5, 1.0, 2.0])  # backoff_s · 2^(n-1), capped at 3 s
    assert type(err) is ChatError
    assert err.endpoint == f"{url}/chat/completions" and err.attempts == 4
    assert err.reason == "HTTP 503: model loading"
    assert str(err) == (
        f"chat:test-vlm: asking about rain via {url}/chat/completions failed after 4 attempt(s): {err.reason}"
    )


@pytest.mark.parametrize("status", [408, 500, 502])
def test_408_and_5xx_are_retried(status: int) -> None:
    with chat_server(lambda n, sent: Reply(status=status) if n == 1 else Reply(content=ANSWER)) as (
        url,
        received,
    ):
        body, delays = complete(url)
    assert len(received) == 2 and delays == [0.5] and message_text(body) == ANSWER


@pytest.mark.parametrize(("status", "raw"), [(400, b'{"error": "bad model"}'), (401, b"no key"), (404, b"")])
def test_other_http_errors_fail_at_once(status: int, raw: bytes) -> None:
    with chat_server(lambda n, sent: Reply(status=status, raw=raw)) as (url, received):
        err, delays = failure(url)
    assert len(received) == 1 and delays == [] and err.attempts == 1
    assert err.reason == f"HTTP {status}: {raw.decode() or '<empty body>'}"
    assert "failed after 1 attempt(s), not retried" in str(err)


def test_timeout_is_retried_then_fails() -> None:
    started = time.perf_counter()
    with chat_server(lambda n, sent: Reply(content=ANSWER, delay_s=3.0)) as (url, received):
        err, delays = failure(url, timeout_s=0.2, max_retries=1)
        assert len(received) == 2
    assert time.perf_counter() - started < 2.5
    assert err.attempts == 2 and delays == [0.5] and err.reason.startswith("timeout after 0.2 s")


def test_connection_refused_is_retried_then_fails() -> None:
    url = refused_url()
    err, delays = failure(url, max_retries=2, backoff_s=0.25)
    assert err.attempts == 3 and delays == [0.25, 0.5]
    assert err.reason.startswith("connection error") and err.endpoint == f"{url}/chat/completions"


def test_unusable_answers_are_the_callers_and_not_retried() -> None:
    for reply, problem in [
        (Reply(raw=b"<html>busy</html>"), "response body is not JSON: <html>busy</html>"),
        (Reply(raw=b'{"choices": []}'), "response has no choices[0].message.content"),
        (Reply(raw=b"[1, 2]"), "response has no choices[0].message.content"),
    ]:
        with (
            chat_server(lambda n, sent, r=reply: r) as (url, received),
            ChatClient(config(url)) as client,
            pytest.raises(UnusableAnswer, match=re.escape(problem)),
        ):
            client.complete(client.request_body(MESSAGES), what="asking")
        assert len(received) == 1


def test_a_subclass_names_itself_and_its_error_type() -> None:
    class JudgeDown(ChatError):
        pass

    class Judge(ChatClient[chat.ChatEndpointConfig]):
        kind = "judge"
        error = JudgeDown

    with (
        chat_server(lambda n, sent: Reply(status=401, raw=b"no key")) as (url, _),
        Judge(config(url)) as client,
        pytest.raises(JudgeDown) as err,
    ):
        client.complete(client.request_body(MESSAGES), what="judging")
    assert client.name == "judge:test-vlm" and str(err.value).startswith("judge:test-vlm: judging via")
    assert err.value.attempts == 1 and isinstance(err.value, ChatError)
    failed = client.failure("captioning x", attempts=3, reason="invalid answer: empty")
    assert type(failed) is JudgeDown and failed.attempts == 3 and failed.endpoint == client.url


def test_backoff_sequence_and_client_ownership() -> None:
    cfg = config("http://vlm:8000/v1", backoff_s=1.0, backoff_max_s=10.0)
    assert [cfg.backoff(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert cfg.backoff(1, retry_after_s=4.0) == 4.0 and cfg.backoff(3, retry_after_s=1.0) == 4.0
    assert cfg.backoff(1, retry_after_s=60.0) == 10.0
    injected = httpx.Client()
    with ChatClient(cfg, client=injected) as client:
        assert client.url == "http://vlm:8000/v1/chat/completions"
    assert not injected.is_closed  # the caller's client stays the caller's
    injected.close()
    own = ChatClient(cfg)
    own.close()
    assert own._client.is_closed


def test_message_text_and_json_object() -> None:
    def body(content: object) -> dict[str, Any]:
        return {"choices": [{"message": {"role": "assistant", "content": content}}]}

    parts = [{"type": "text", "text": '{"a": '}, {"type": "image_url"}, {"type": "text", "text": "1}"}]
    assert message_text(body(parts)) == '{"a": 1}'
    assert message_text(body(None)) == ""
    assert chat.json_object('Sure:\n```json\n{"a": 1}\n```') == {"a": 1}
    assert chat.json_object('I think {"a": [1, 2]} is it') == {"a": [1, 2]}
    for text, problem in [("  ", "empty message content"), ("{oops", "not JSON"), ("[1]", "got list")]:
        with pytest.raises(UnusableAnswer, match=problem):
            chat.json_object(text)


def test_jpeg_data_url_scales_the_longer_side() -> None:
    frame = np.full((40, 100, 3), 200, np.uint8)
    head, data = chat.jpeg_data_url(frame, 90, max_side=50).split(",", 1)
    assert head == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as img:
        assert img.format == "JPEG" and img.size == (50, 20)
        assert abs(float(np.asarray(img).mean()) - 200) < 2
