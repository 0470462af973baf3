"""Captioners: the offline rules on real SynthWorld captions, and the chat captioner against a real
local HTTP server that speaks the Chat Completions protocol."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chat_endpoint import Reply, Sent, chat_server, endpoint_fields, refused_url
from PIL import Image
from pydantic import ValidationError

from worldloop.components.curation.captioning import (
    Captioner,
    CaptionerConfig,
    CaptionError,
    CaptionRequest,
    CaptionResult,
    ChatCaptioner,
    ChatCaptionerConfig,
    FallbackCaptioner,
    InteractionCandidate,
    RuleCaptioner,
    build_captioner,
    clean_text,
    pick_keyframes,
)
from worldloop.components.synthworld import (
    Category,
    ClipRecord,
    Defect,
    EventKind,
    SynthConfig,
    generate_clip,
    write_raw,
)
from worldloop.components.synthworld.events import SPECS
from worldloop.components.synthworld.raw import TRUTH, loose_caption
from worldloop.data import InteractionCaption

CFG = SynthConfig(size=64, frames=17)
W, H = 64, 48
RULES = RuleCaptioner()


def frames(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def request(
    source: str | None,
    candidate: InteractionCandidate | None = None,
    *,
    keyframes: list[np.ndarray] | None = None,
    indices: list[int] | None = None,
    num_frames: int = 17,
    camera: str = "the camera moves forward and turns left",
) -> CaptionRequest:
    keyframes = frames() if keyframes is None else keyframes
    indices = indices if indices is not None else [0, 8, 16][: len(keyframes)]
    return CaptionRequest(
        clip_id="clip_x",
        frames=keyframes,
        frame_indices=indices,
        num_frames=num_frames,
        fps=16.0,
        source_caption=source,
        camera_motion=camera,
        interaction=candidate,
    )


def candidate(onset: int = 6, *, global_change: bool = False, score: float = 2.0) -> InteractionCandidate:
    bbox = None if global_change else (20, 14, 44, 40)
    return InteractionCandidate(onset_frame=onset, score=score, bbox=bbox, global_change=global_change)


# ------------------------------------------------------------------------------------------------
# RuleCaptioner
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EventKind))
def test_rules_recover_synthworld_interaction_from_loose_caption(kind: EventKind) -> None:
    clip = generate_clip(CFG, 100 + list(EventKind).index(kind), kind=kind)
    assert clip.event is not None and clip.interaction is not None
    text = loose_caption(clip)
    env = SPECS[kind].category is Category.environment and kind is not EventKind.explosion
    cand = candidate(clip.event.onset, global_change=env)
    keys = [0, clip.event.onset - 1, CFG.frames - 1]
    result = RULES.caption(request(text, cand, keyframes=[clip.frames[i] for i in keys], indices=keys))
    assert result.captioner == "rules"
    assert result.interaction == clip.interaction  # agent, action, object, state change, text, instruction
    assert result.captions.short == clip.captions.short
    long = result.captions.long
    assert long.startswith(clip.captions.short)
    assert "The camera moves forward and turns left." in long
    assert f"(frame {clip.event.onset})" in long and f"{clip.event.onset / 16:.1f} s" in long
    assert clip.interaction.text[1:] in long
    assert len([s for s in long.split(". ") if s]) >= 3


def test_rules_on_raw_pairs_written_by_synthworld(tmp_path: Path) -> None:
    """Read the .txt files exactly as curation will (bytes, UTF-8 with replacement)."""
    truths = write_raw(tmp_path, CFG, clips=12, seed=3, bad_fraction=0.75)
    checked = 0
    for truth in truths:
        txt = tmp_path / f"{truth.name}.txt"
        source = txt.read_bytes().decode("utf-8", errors="replace") if txt.exists() else None
        truth_file = tmp_path / TRUTH / f"{truth.name}.json"
        record = ClipRecord.model_validate_json(truth_file.read_text()) if truth_file.exists() else None
        onset = record.events[0].onset_frame if record and record.events else 5
        result = RULES.caption(request(source, candidate(onset)))
        assert "\ufffd" not in result.captions.long + result.captions.short
        if truth.defect is Defect.missing_caption:
            # No words: the strong candidate alone gives a generic caption with a concrete agent.
            assert source is None and result.interaction is not None
            assert result.interaction.agent == "the player"
        elif record is not None:
            assert record.events and result.interaction == record.events[0].caption
            assert result.captions.short == record.captions.short
            checked += 1
    assert checked >= 2
    assert any(t.defect is Defect.non_utf8_caption for t in truths)


@pytest.mark.parametrize(
    ("text", "agent", "action", "obj", "instruction"),
    [
        (
            "a torch-lit stone hall with a wooden door, the player opens the door",
            "the player",
            "opens",
            "the door",
            "open the door",
        ),
        (
            "castle yard. The knight slowly opens the old wooden gate!",
            "the knight",
            "opens",
            "the old wooden gate",
            "open the gate",
        ),
        ("dark cellar - i draw my torch", "the player", "draws", "the torch", "draw a torch"),
        ("a hut, he lights a lantern", "the player", "lights", "a lantern", "light a lantern"),
        ("she shoots at the crates", "the player", "shoots", "the gun", "shoot"),
        ("Courtyard at dusk; it starts to snow", "the weather", "turns to snow", "the room", "make it snow"),
        (
            "a street, heavy rain starts... RAIN FALLS",
            "the weather",
            "turns to rain",
            "the room",
            "make it rain",
        ),
        ("the sun sets over the plaza", "the daylight", "fades", "the room", "make it night"),
        (
            "a barrel explodes next to the wall",
            "a barrel",
            "explodes",
            "the floor ahead",
            "trigger an explosion",
        ),
        (
            "cave, suddenly a huge dragon emerges",
            "a huge dragon",
            "appears",
            "the floor ahead",
            "a dragon appears",
        ),
        ("a parking lot, a truck drives in", "a truck", "appears", "the floor ahead", "a truck appears"),
        ("a man appears near the fountain", "a man", "appears", "the floor ahead", "a man appears"),
    ],
)
def test_rules_read_free_text_in_all_three_categories(
    text: str, agent: str, action: str, obj: str, instruction: str
) -> None:
    result = RULES.caption(request(text, candidate()))
    it = result.interaction
    assert it is not None
    assert (it.agent, it.action, it.object, it.instruction) == (agent, action, obj, instruction)
    assert it.state_change and it.text.endswith(".") and it.text[0].isupper()


def test_torch_lit_scene_is_scene_not_interaction() -> None:
    result = RULES.caption(
        request("a torch-lit stone hall with a wooden door, the player opens the door", candidate())
    )
    assert result.captions.short == "A torch-lit stone hall with a wooden door."
    assert result.interaction is not None and result.interaction.instruction == "open the door"
    silent = RULES.caption(
        request("a torch-lit hall with a lit torch, fires burn in the corners", candidate(score=0.1))
    )
    assert silent.interaction is None  # weak candidate, and nothing the text says is an interaction


def test_no_interaction_without_words_and_candidate() -> None:
    scene_only = "first-person view of a chapel with riveted metal walls"
    assert RULES.caption(request(scene_only)).interaction is None
    # The text names one, but nothing visual backs it.
    result = RULES.caption(request(scene_only + ", a dragon appears"))
    assert result.interaction is None
    assert "No interaction" in result.captions.long and "dragon" not in result.captions.long
    # A weak candidate alone is not enough.
    assert RULES.caption(request(scene_only, candidate(score=0.2))).interaction is None


def test_silent_text_with_strong_candidate_gives_generic_but_concrete_caption() -> None:
    bright = np.full((H, W, 3), 180, np.uint8)
    dark = np.full((H, W, 3), 40, np.uint8)
    req = request("a hall", candidate(8, global_change=True), keyframes=[bright, bright, dark])
    it = RULES.caption(req).interaction
    assert it is not None and (it.agent, it.action, it.instruction) == ("the light", "dims", "make it darker")
    local = InteractionCandidate(onset_frame=8, score=3.0, bbox=(0, 20, 12, 30), global_change=False)
    it = RULES.caption(request(None, local)).interaction
    assert it is not None
    assert it.agent == "the player" and it.action == "interacts with"
    assert (
        it.object == "the object on the left of the view"
        and it.instruction == "interact with the object on the left"
    )
    for value in it.model_dump().values():
        assert "something" not in value


@pytest.mark.parametrize(
    "source",
    [
        None,
        "",
        "   \n\t ",
        "\ufffd\ufffd\ufffd ??? \x00\x07",
        "<b>#gameplay</b> 4K https://example.com/v?id=1 🎮🔥",
        b"a person appears; a person materialises \xe9\xe8 \x80\xff".decode("utf-8", errors="replace"),
        ("first-person view of a hall, the player fires the pistol — café crème")
        .encode("latin-1", "replace")
        .decode("utf-8", errors="replace"),
    ],
)
@pytest.mark.parametrize("cand", [None, candidate(4)])
def test_missing_empty_or_garbled_captions_do_not_crash(
    source: str | None, cand: InteractionCandidate | None
) -> None:
    result = RULES.caption(request(source, cand))
    long, short = result.captions.long, result.captions.short
    assert long and short and "\n" not in short
    assert "\ufffd" not in long + short and "\x00" not in long
    assert "The camera moves forward and turns left." in long
    if cand is not None and source and "appears" in source:
        assert result.interaction is not None and result.interaction.instruction == "a person appears"
    if cand is not None and source and "pistol" in source:
        assert result.interaction is not None and result.interaction.object == "the pistol"
        assert "caf" not in result.interaction.state_change


def test_empty_caption_and_empty_camera_still_describe_clip() -> None:
    result = RULES.caption(request(None, None, keyframes=[], indices=[], camera=""))
    assert result.captions.short == "A first-person game scene."
    assert result.captions.long.count(".") >= 3


def test_rules_are_deterministic() -> None:
    text = "a hall with grey stone walls, the player draws a torch: a burning torch rises into view"
    a = RuleCaptioner().caption(request(text, candidate()))
    b = RuleCaptioner().caption(request(text, candidate()))
    assert a.model_dump_json() == b.model_dump_json()


def test_clean_text_drops_unreadable_words() -> None:
    assert clean_text("The Player \ufffdpens THE door, caf\ufffd!") == "the player the door,"
    assert clean_text(None) == ""


def test_request_and_candidate_are_validated() -> None:
    with pytest.raises(ValueError, match="score"):
        InteractionCandidate(onset_frame=1, score=-1.0, bbox=None, global_change=True)
    with pytest.raises(ValueError, match="bbox"):
        InteractionCandidate(onset_frame=1, score=1.0, bbox=(5, 5, 2, 9), global_change=False)
    with pytest.raises(ValueError, match="indices"):
        request("x", keyframes=frames(2), indices=[0])
    with pytest.raises(ValueError, match="RGB"):
        request("x", keyframes=[np.zeros((4, 4), np.uint8)], indices=[0])
    with pytest.raises(ValueError, match="onset"):
        request("x", candidate(40))
    with pytest.raises(ValidationError):
        CaptionResult.model_validate(
            {"captions": {"long": "a", "short": "two\nlines"}, "interaction": None, "captioner": "x"}
        )


def test_pick_keyframes_keeps_the_frames_around_the_onset() -> None:
    indices = list(range(0, 33, 4))  # 9 keyframes
    chosen = pick_keyframes(indices, 4, onset=14)
    assert len(chosen) == 4 and chosen == sorted(chosen)
    assert {indices[p] for p in chosen} >= {12, 16, 0, 32}
    assert pick_keyframes(indices, 0, None) == [] and pick_keyframes(indices[:2], 5, None) == [0, 1]


# ------------------------------------------------------------------------------------------------
# ChatCaptioner against a real local HTTP server (tests/chat_endpoint.py)
# ------------------------------------------------------------------------------------------------

ANSWER = {
    "captions": {
        "long": "A stone hall lit by torches. The camera moves forward. At 0.4 s the player opens the door.",
        "short": "A stone hall with a wooden door.",
    },
    "interaction": {
        "agent": "the player",
        "action": "opens",
        "object": "the wooden door",
        "state_change": "the door swings open",
        "text": "The player opens the wooden door: the door swings open.",
        "instruction": "open the door",
    },
}


GOOD = json.dumps(ANSWER)


def good(n: int, sent: Sent) -> Reply:
    """A script (tests/chat_endpoint.py) that answers every request with :data:`ANSWER`."""
    return Reply(content=GOOD)


def chat_config(url: str, **overrides: Any) -> ChatCaptionerConfig:
    fields = endpoint_fields(url, api_key="sk-test", max_retries=2, max_frames=2)
    return ChatCaptionerConfig.model_validate(fields | overrides)


def test_chat_sends_a_proper_request_and_parses_the_answer() -> None:
    source = "a stone hall, the player opens the door"
    req = request(source, candidate(6), keyframes=frames(3), indices=[0, 8, 16])
    with chat_server(good) as server, ChatCaptioner(chat_config(server.url + "/")) as chat:
        result = chat.caption(req)
    assert isinstance(chat, Captioner) and chat.name == "chat:test-vlm"
    assert result.captioner == "chat:test-vlm"
    assert result.interaction == InteractionCaption.model_validate(ANSWER["interaction"])
    assert result.captions.short == ANSWER["captions"]["short"]

    (sent,) = server.received
    assert sent.path == "/v1/chat/completions"
    assert sent.authorization == "Bearer sk-test"
    assert sent.content_type == "application/json"
    body = sent.body
    assert body["model"] == "test-vlm" and body["temperature"] == 0.0
    assert body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system" and "clear agent" in system["content"]
    assert user["role"] == "user"
    text, *images = user["content"]
    assert text["type"] == "text"
    for needle in (
        source,
        "the camera moves forward and turns left",
        "frame 6",
        "(20, 14, 44, 40)",
        '"captions"',
    ):
        assert needle in text["text"]
    assert len(images) == 2  # max_frames
    for part in images:
        assert part["type"] == "image_url"
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        jpeg = base64.b64decode(url.split(",", 1)[1], validate=True)
        assert jpeg[:2] == b"\xff\xd8"
        with Image.open(io.BytesIO(jpeg)) as img:
            assert img.format == "JPEG" and img.size == (W, H) and img.mode == "RGB"
    # The frames just before and at the onset (indices 0 and 8 around onset 6) were chosen.
    assert "frame 0 (0.00 s), frame 8 (0.50 s)" in text["text"]


def test_chat_tolerates_fences_reads_key_from_env_and_drops_unbacked_interaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WL_TEST_CHAT_KEY", "from-env")
    fenced = "Here you go:\n```json\n" + json.dumps(ANSWER) + "\n```"
    cfg = dict(api_key=None, api_key_env="WL_TEST_CHAT_KEY")
    with (
        chat_server(lambda n, _: Reply(content=fenced)) as server,
        ChatCaptioner(chat_config(server.url, **cfg)) as chat,
    ):
        backed = chat.caption(request("x", candidate()))
        unbacked = chat.caption(request("x", None))
    assert backed.interaction is not None and backed.interaction.instruction == "open the door"
    assert unbacked.interaction is None  # require_candidate
    assert [r.authorization for r in server.received] == ["Bearer from-env"] * 2

    with (
        chat_server(good) as server,
        ChatCaptioner(chat_config(server.url, api_key=None, api_key_env=None, max_frames=0)) as chat,
    ):
        chat.caption(request("x", candidate()))
    assert server.received[0].authorization is None
    assert len(server.received[0].body["messages"][1]["content"]) == 1  # text only


def test_chat_retries_500_then_429_then_succeeds() -> None:
    script = {
        1: Reply(status=500, raw=b"boom"),
        2: Reply(status=429, raw=b"slow down"),
    }
    delays: list[float] = []
    with chat_server(lambda n, _: script.get(n, Reply(content=GOOD))) as server:
        chat = ChatCaptioner(chat_config(server.url), sleep=delays.append)
        result = chat.caption(request("x", candidate()))
        chat.close()
    assert result.interaction is not None
    assert len(server.received) == 3
    assert delays == pytest.approx([0.01, 0.02])  # exponential backoff


def caption_once(url: str, **overrides: Any) -> CaptionResult:
    with ChatCaptioner(chat_config(url, **overrides)) as chat:
        return chat.caption(request("x", candidate()))


def caption_error(url: str, **overrides: Any) -> CaptionError:
    with ChatCaptioner(chat_config(url, **overrides)) as chat, pytest.raises(CaptionError) as err:
        chat.caption(request("x", candidate()))
    return err.value


def test_chat_retries_an_answer_that_breaks_the_schema() -> None:
    bad = json.dumps({"captions": {"long": "only long"}})
    with chat_server(lambda n, _: Reply(content=bad if n == 1 else GOOD)) as server:
        result = caption_once(server.url)
    assert len(server.received) == 2 and result.captions.short


def test_chat_counts_answers_apart_from_http_retries() -> None:
    """The rule since the captioner uses the platform's ChatClient: a clip gets max_retries + 1 answers,
    an unusable one is re-sent at once, and the HTTP retries before an answer are the client's."""
    bad = json.dumps({"captions": {"long": "only long"}})
    script = {1: Reply(status=500, raw=b"boom"), 2: Reply(content=bad)}
    delays: list[float] = []
    with (
        chat_server(lambda n, _: script.get(n, Reply(content=GOOD))) as server,
        ChatCaptioner(chat_config(server.url, max_retries=1), sleep=delays.append) as chat,
    ):
        result = chat.caption(request("x", candidate()))
    assert len(server.received) == 3 and result.captions.short
    assert delays == pytest.approx([0.01])  # the 500 backs off; the bad answer is re-sent at once


def test_chat_gives_up_on_invalid_json_after_all_attempts() -> None:
    with chat_server(lambda n, _: Reply(content="I think the door opens {not json")) as server:
        err = caption_error(server.url, max_retries=2)
    assert len(server.received) == 3  # max_retries + 1
    message = str(err)
    assert server.url + "/chat/completions" in message and "3 attempt" in message and "not JSON" in message
    assert err.attempts == 3 and err.endpoint.endswith("/v1/chat/completions")


def test_chat_does_not_retry_a_client_error() -> None:
    with chat_server(lambda n, _: Reply(status=400, raw=b'{"error": "bad model"}')) as server:
        err = caption_error(server.url, max_retries=3)
    assert len(server.received) == 1
    assert "HTTP 400" in str(err) and "bad model" in str(err) and err.attempts == 1


def test_chat_times_out() -> None:
    started = time.perf_counter()
    with chat_server(lambda n, _: Reply(content=GOOD, delay_s=3.0)) as server:
        err = caption_error(server.url, timeout_s=0.2, max_retries=1)
        assert len(server.received) == 2
    assert time.perf_counter() - started < 2.5
    assert "timeout" in str(err) and "2 attempt" in str(err)


def test_chat_connection_refused() -> None:
    err = caption_error(refused_url(), max_retries=1)
    assert "connection error" in str(err) and err.attempts == 2


def test_fallback_to_rules_when_chat_fails() -> None:
    text = "a hall, the player draws a torch"
    with chat_server(lambda n, _: Reply(status=503, raw=b"down")) as server:
        cfg = CaptionerConfig(
            kind="chat", chat=chat_config(server.url, max_retries=1), fallback_to_rules=True
        )
        captioner = build_captioner(cfg)
        assert isinstance(captioner, FallbackCaptioner)
        result = captioner.caption(request(text, candidate()))
        captioner.close()
    assert len(server.received) == 2
    assert result.captioner == "rules(fallback)"
    assert result.interaction is not None and result.interaction.instruction == "draw a torch"
    with chat_server(good) as server:
        both = FallbackCaptioner(ChatCaptioner(chat_config(server.url)), RULES)
        ok = both.caption(request(text, candidate()))
        both.close()
    assert ok.captioner == "chat:test-vlm"


def test_config_and_builder() -> None:
    assert isinstance(build_captioner(CaptionerConfig()), RuleCaptioner)
    with pytest.raises(ValidationError, match="chat"):
        CaptionerConfig(kind="chat")
    with pytest.raises(ValidationError, match="only allowed"):
        CaptionerConfig(kind="rules", chat=chat_config("http://h:1/v1"))
    with pytest.raises(ValidationError, match="endpoint"):
        chat_config("ftp://h/v1")
    cfg = chat_config("http://vlm:8000/v1/chat/completions/")
    assert cfg.endpoint == "http://vlm:8000/v1"
    assert "sk-test" not in repr(cfg)
    built = build_captioner(CaptionerConfig(kind="chat", chat=cfg))
    assert isinstance(built, ChatCaptioner) and built.url == "http://vlm:8000/v1/chat/completions"
    built.close()
