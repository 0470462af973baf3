"""Pluggable captioners for curated clips (DESIGN.md §3).

Every curated clip needs three pieces of text: a long scene caption (several sentences), a short one
(one line) and, when the clip shows one, an interaction caption in the paper's sense: an action by a
clear agent that triggers a state transition with clear causality and physical or logical validity.

Two captioners speak the same :class:`Captioner` protocol:

* :class:`RuleCaptioner` (the offline default) reads the scraped caption with a small verb/noun
  lexicon for the three interaction categories (environment, character action, entity emergence),
  combines it with the pipeline's camera-motion text and visual interaction candidate, and is fully
  deterministic with no network.
* :class:`ChatCaptioner` asks a VLM/LLM behind an OpenAI-compatible Chat Completions endpoint,
  sending keyframes as JPEG data URLs and validating the JSON answer, with retries and backoff.

:class:`FallbackCaptioner` chains the two; :func:`build_captioner` turns a config into a captioner.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import cv2
import httpx
import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from worldloop.components.synthworld.schema import Captions, InteractionCaption

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Request / result types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InteractionCandidate:
    """A persistent, non-camera change found by the pipeline's visual interaction miner."""

    onset_frame: int  # first frame of the state transition
    score: float  # strength of the change, >= 0
    bbox: tuple[int, int, int, int] | None  # x0, y0, x1, y1 of the changed region; None if global
    global_change: bool  # whole-frame change (lighting, weather) rather than a local one

    def __post_init__(self) -> None:
        if self.onset_frame < 0:
            raise ValueError(f"onset_frame must be >= 0, got {self.onset_frame}")
        if not math.isfinite(self.score) or self.score < 0:
            raise ValueError(f"score must be a finite number >= 0, got {self.score}")
        if self.bbox is not None:
            if len(self.bbox) != 4:
                raise ValueError(f"bbox must be (x0, y0, x1, y1), got {self.bbox}")
            x0, y0, x1, y1 = self.bbox
            if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
                raise ValueError(f"bbox must satisfy 0 <= x0 < x1 and 0 <= y0 < y1, got {self.bbox}")


@dataclass(frozen=True, eq=False)
class CaptionRequest:
    """Everything a captioner may look at for one clip."""

    clip_id: str
    frames: list[np.ndarray]  # a few keyframes (H, W, 3) uint8 RGB, in time order
    frame_indices: list[int]  # their indices in the clip
    num_frames: int
    fps: float
    source_caption: str | None  # the scraped text; may be None or messy
    camera_motion: str  # e.g. "the camera moves forward and turns left"
    interaction: InteractionCandidate | None

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not math.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if len(self.frames) != len(self.frame_indices):
            raise ValueError(
                f"{len(self.frames)} frames but {len(self.frame_indices)} frame indices for {self.clip_id}"
            )
        for frame in self.frames:
            if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
                raise ValueError("keyframes must be uint8 numpy arrays")
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
                raise ValueError(f"keyframes must be (H, W, 3) RGB, got shape {frame.shape}")
        if any(not 0 <= i < self.num_frames for i in self.frame_indices):
            raise ValueError(f"frame indices must lie in [0, {self.num_frames}), got {self.frame_indices}")
        if any(b <= a for a, b in zip(self.frame_indices, self.frame_indices[1:], strict=False)):
            raise ValueError(f"frame indices must be strictly increasing, got {self.frame_indices}")
        if self.interaction is not None and self.interaction.onset_frame >= self.num_frames:
            raise ValueError(
                f"interaction onset {self.interaction.onset_frame} is past the clip's end "
                f"({self.num_frames} frames)"
            )

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(width, height) of the keyframes, or None without any."""
        if not self.frames:
            return None
        return int(self.frames[0].shape[1]), int(self.frames[0].shape[0])


class CaptionResult(BaseModel):
    """What a captioner returns for one clip."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    captions: Captions
    interaction: InteractionCaption | None
    captioner: str = Field(min_length=1, description="Who wrote it, e.g. 'rules' or 'chat:<model>'.")

    @model_validator(mode="after")
    def _check(self) -> CaptionResult:
        if not self.captions.long.strip() or not self.captions.short.strip():
            raise ValueError("long and short captions must not be empty")
        if "\n" in self.captions.short or "\r" in self.captions.short:
            raise ValueError("the short caption must be a single line")
        return self


class CaptionError(RuntimeError):
    """A captioner could not produce a caption (endpoint down, bad answers, ...)."""

    def __init__(self, message: str, *, endpoint: str = "", attempts: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.attempts = attempts
        self.reason = reason


@runtime_checkable
class Captioner(Protocol):
    """Anything that turns a :class:`CaptionRequest` into a :class:`CaptionResult`."""

    name: str

    def caption(self, request: CaptionRequest) -> CaptionResult: ...


# --------------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"\s*(?:[,;:.!?()\[\]{}|/\n\r\t]|\s[-–—]+\s|[–—])\s*")
_HTML = re.compile(r"<[^>]{0,200}>")
_URL = re.compile(r"(?:https?://|www\.)\S+")
_KEEP_PUNCT = set(",;:.!?()-'–— ")
_FILLER = {"4k", "hd", "1080p", "720p", "60fps", "30fps", "gameplay", "footage", "video", "clip"}


def clean_text(text: str | None, max_chars: int = 4000) -> str:
    """Lower-case, printable text: mojibake words (with U+FFFD), markup, URLs and symbols removed;
    only the first ``max_chars`` characters are read."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text[:max_chars])
    text = _URL.sub(" ", _HTML.sub(" ", text)).replace("_", " ").replace("#", " ").replace("@", " ")
    words = []
    for token in text.split():
        if "\ufffd" in token:  # a word the decoder could not read: drop it whole, not half of it
            continue
        kept = "".join(ch for ch in token if ch in _KEEP_PUNCT or unicodedata.category(ch)[0] in "LN").strip(
            "-'"
        )
        if any(ch.isalnum() for ch in kept) or (kept and kept[0] in ",;:.!?–—"):
            words.append(kept)
    return " ".join(words).lower().strip()


def _clauses(text: str) -> list[str]:
    return [c.strip(" -'") for c in _SEPARATORS.split(text) if c.strip(" -'")]


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".,;: ")
    if not text:
        return ""
    return text[0].upper() + text[1:] + "."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _clip_words(text: str, limit: int) -> str:
    words = text.split()
    return text if len(words) <= limit else " ".join(words[:limit])


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;: ")
    return cut + "…"


def region_phrase(bbox: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    """Where a box sits in the view, e.g. 'in the centre of the view', 'on the left of the view'."""
    width, height = size
    cx = (bbox[0] + bbox[2]) / 2 / max(width, 1)
    cy = (bbox[1] + bbox[3]) / 2 / max(height, 1)
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    vert = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle"
    if horiz == "centre" and vert == "middle":
        return "in the centre of the view"
    if vert == "middle":
        return f"on the {horiz} of the view"
    if horiz == "centre":
        return f"in the {vert} part of the view"
    return f"in the {vert} {horiz} of the view"


# --------------------------------------------------------------------------------------------------
# Interaction lexicon
# --------------------------------------------------------------------------------------------------

_B = r"(?<![\w-])"  # word start (a hyphenated compound such as "torch-lit" is one word)
_E = r"(?![\w-])"  # word end
_DET = r"(?:the|a|an|his|her|their|my|your|its|this|that)"
_MOD = r"(?:(?!(?:with|of|and|in|on|at|to|from|into|the|a|an)\s)[a-z][\w'-]*\s+){0,2}?"
_DOOR = r"(?:doors?|gates?|hatch|doorway|shutters?)"
_LIGHTS = r"(?:torch|lantern|candle|flare)"
_WEAPON = r"(?:pistol|gun|handgun|rifle|shotgun|revolver|weapon|bow|crossbow|blaster|cannon)"
_ENTITY_VERBS = (
    r"(?:appears|appeared|appear|emerges|emerged|materiali[sz]es|materiali[sz]ed|spawns|spawned|"
    r"shows up|showed up|pops up|popped up|arrives|arrived|walks in|drives in|flies in|comes into view)"
)
_ENTITY_NP = rf"(?:a|an|the|some)\s+{_MOD}(?!(?:with|of|and|in|on|at|to)\s)[a-z][\w'-]*"
_PRONOUN_AGENT = re.compile(
    r"(?:^|\s)(?:i|you|we|he|she|they|someone|somebody|player|gamer|character|protagonist)$"
)
_NP_AGENT = re.compile(rf"(?:^|\s)(?P<np>(?:the|a|an)\s+{_MOD}[a-z][\w'-]*)$")
_ADVERB = re.compile(r"\s+(?:then|now|suddenly|finally|quickly|slowly|also|just|\w{3,}ly)$")
_ENV_OBJECTS = {"the room", "the floor ahead"}


def _np(nouns: str) -> str:
    return rf"{_DET}\s+{_MOD}{nouns}{_E}"


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


@dataclass(frozen=True)
class _Rule:
    kind: str
    category: str  # environment | character_action | entity_emergence
    pattern: re.Pattern[str]  # finds the interaction in one clause; optional groups obj / agent / verb
    agent: str  # default agent (used when the text names none)
    action: str  # canonical third-person verb phrase
    object: str  # default object
    state_change: str  # default state change ("{obj}" / "{agent}" / "{noun}" are filled in)
    instruction: str  # imperative ("{noun}" / "{a}" are filled in)
    state_words: re.Pattern[str]  # a following clause is taken as the state change if it matches
    agent_from_text: bool = True  # read the agent from the words before the match


_RULES: tuple[_Rule, ...] = (
    _Rule(
        "open_door",
        "character_action",
        _rx(
            rf"{_B}(?P<verb>opens?|opened|opening|unlocks?|unlocked|unlocking|"
            rf"(?:pushes|pulls|kicks|slides|pries) open)\s+(?:up\s+)?(?P<obj>{_np(_DOOR)})",
            rf"(?P<obj2>{_np(_DOOR)})\s+(?:slowly\s+|suddenly\s+)?(?P<verb2>opens|opened|is opened|"
            rf"(?:slides|swings|creaks|bursts|rolls) open){_E}",
        ),
        "the player",
        "opens",
        "the door",
        "the {noun} opens and reveals the space behind it",
        "open the {noun}",
        re.compile(r"door|gate|hatch|open|reveal|behind"),
    ),
    _Rule(
        "close_door",
        "character_action",
        _rx(
            rf"{_B}(?P<verb>closes?|closed|closing|shuts?|shutting|slams?|slammed|locks?|locked)\s+"
            rf"(?P<obj>{_np(_DOOR)})",
            rf"(?P<obj2>{_np(_DOOR)})\s+(?:slowly\s+|suddenly\s+)?(?P<verb2>closes|closed|is closed|"
            rf"(?:slides|swings|slams) shut){_E}",
        ),
        "the player",
        "closes",
        "the door",
        "the {noun} closes and shuts off the space behind it",
        "close the {noun}",
        re.compile(r"door|gate|hatch|shut|clos|block"),
    ),
    _Rule(
        "light_torch",
        "character_action",
        _rx(rf"{_B}(?P<verb>lights?|lighting|ignites?|ignited|kindles?|kindled)\s+(?P<obj>{_np(_LIGHTS)})"),
        "the player",
        "lights",
        "a torch",
        "{obj} catches fire and lights the surroundings",
        "light {a} {noun}",
        re.compile(r"torch|lantern|candle|flare|fire|flame|light|glow|burn"),
    ),
    _Rule(
        "draw_torch",
        "character_action",
        _rx(
            rf"{_B}(?P<verb>draws?|drew|drawing|pulls? out|pulled out|takes? out|took out|raises?|raised|"
            rf"holds? up|brandish(?:es)?|equips?|equipped|wields?)\s+(?P<obj>{_np(_LIGHTS)})"
        ),
        "the player",
        "draws",
        "a torch",
        "a burning {noun} rises into view and lights the surroundings",
        "draw {a} {noun}",
        re.compile(r"torch|lantern|candle|flare|fire|flame|light|glow|burn|view"),
    ),
    _Rule(
        "shoot",
        "character_action",
        _rx(
            rf"{_B}(?P<verb>fires?|fired|firing|shoots?|shooting)\s+(?P<obj>{_np(_WEAPON)})",
            rf"{_B}(?P<verb2>fires|fired|firing|shoots|shoot|shooting|pulls the trigger){_E}",
        ),
        "the player",
        "fires",
        "the gun",
        "a muzzle flash bursts and a bullet hole appears where the shot lands",
        "shoot",
        re.compile(r"flash|bullet|hole|spark|recoil|shot|impact|smoke|muzzle"),
    ),
    _Rule(
        "snow",
        "environment",
        _rx(
            rf"{_B}(?:turns? to snow|snows|snowing|snowfall|snow (?:falls|starts|begins)|"
            rf"(?:starts?|begins?|started|began) to snow|snowflakes (?:fall|start|begin)|make it snow){_E}"
        ),
        "the weather",
        "turns to snow",
        "the room",
        "snow falls and the floor gradually turns white",
        "make it snow",
        re.compile(r"snow|white|flake|frost|cold"),
        agent_from_text=False,
    ),
    _Rule(
        "rain",
        "environment",
        _rx(
            rf"{_B}(?:turns? to rain|rains|raining|rainfall|downpour|rain (?:falls|starts|begins|pours)|"
            rf"(?:starts?|begins?|started|began) to rain|raindrops (?:fall|start|begin)|make it rain){_E}"
        ),
        "the weather",
        "turns to rain",
        "the room",
        "rain pours down and the floor turns dark and wet",
        "make it rain",
        re.compile(r"rain|wet|puddle|drop|pour|storm"),
        agent_from_text=False,
    ),
    _Rule(
        "night",
        "environment",
        _rx(
            rf"{_B}(?:turns? (?:to|into) night|night falls|nightfall|becomes? night|"
            rf"(?:day)?light (?:fades|dims|dies)|lights? (?:go|goes|went) out|darkness falls|"
            rf"(?:sun|the sun) sets|dusk falls|make it night|"
            rf"(?:it|the scene|the room|the sky|the world|everything) "
            rf"(?:gets|grows|goes|turns|becomes) dark){_E}"
        ),
        "the daylight",
        "fades",
        "the room",
        "the light dims until the scene is dark",
        "make it night",
        re.compile(r"dark|dim|night|black|light|shadow"),
        agent_from_text=False,
    ),
    _Rule(
        "explosion",
        "environment",
        _rx(
            rf"{_B}(?P<verb>explodes|exploded|explode|exploding|detonates|detonated|blows up|blew up){_E}",
            rf"{_B}(?P<verb2>explosion|detonation){_E}",
        ),
        "a charge",
        "explodes",
        "the floor ahead",
        "a fireball flares up and leaves smoke and a scorch mark",
        "trigger an explosion",
        re.compile(r"fire|smoke|scorch|flame|blast|debris|flash|burn|shake"),
    ),
    _Rule(
        "emergence",
        "entity_emergence",
        _rx(
            rf"(?P<agent>{_ENTITY_NP})\s+(?:suddenly\s+|slowly\s+)?(?P<verb>{_ENTITY_VERBS}){_E}",
            rf"{_B}(?:there (?:appears|emerges)|summons|summoned|spawns|conjures|conjured)\s+"
            rf"(?P<agent2>{_ENTITY_NP}){_E}",
        ),
        "",
        "appears",
        "the floor ahead",
        "{agent} materialises in front of the player",
        "{a} {noun} appears",
        re.compile(r"materiali|appear|stand|front|emerge|arriv"),
    ),
)


@dataclass(frozen=True)
class _Found:
    rule: _Rule
    clause: int
    start: int
    match: re.Match[str]


def _find(clauses: list[str]) -> _Found | None:
    """The first interaction named in the text: earliest clause, then earliest position in it."""
    for index, clause in enumerate(clauses):
        best: _Found | None = None
        for rule in _RULES:
            m = rule.pattern.search(clause)
            if m is not None and (best is None or m.start() < best.start):
                best = _Found(rule, index, m.start(), m)
        if best is not None and _plausible(best, clause):
            return best
    return None


def _plausible(found: _Found, clause: str) -> bool:
    """Reject bare verbs that are more likely nouns ("fires burn in the hall")."""
    m = found.match
    if found.rule.kind == "shoot" and m.group("obj") is None:
        return _agent_before(clause[: m.start()]) is not None
    return True


def _agent_before(prefix: str) -> str | None:
    """The noun phrase right before the verb ("... the player" → "the player"), pronouns → player."""
    prefix = prefix.strip()
    while True:
        stripped = _ADVERB.sub("", prefix)
        if stripped == prefix:
            break
        prefix = stripped
    if _PRONOUN_AGENT.search(prefix):
        return "the player"
    m = _NP_AGENT.search(prefix)
    return m.group("np") if m else None


def _normalise_np(np_text: str) -> str:
    words = np_text.split()
    if words and words[0] in {"his", "her", "their", "my", "your", "its", "this", "that"}:
        words[0] = "the"
    return " ".join(words)


def _group(m: re.Match[str], *names: str) -> str | None:
    for name in names:
        value = m.groupdict().get(name)
        if value:
            return value
    return None


def _state_from_text(clauses: list[str], after: int, rule: _Rule) -> str | None:
    taken = []
    for clause in clauses[after + 1 :]:
        if "camera" in clause or len(clause.split()) < 2 or not rule.state_words.search(clause):
            break
        taken.append(clause)
    return ", ".join(taken) if taken else None


def _interaction_from_text(clauses: list[str], found: _Found) -> InteractionCaption:
    rule, m, clause = found.rule, found.match, clauses[found.clause]
    obj = _group(m, "obj", "obj2")
    obj = _normalise_np(obj) if obj else rule.object
    verb = _group(m, "verb", "verb2") or ""
    action, agent = rule.action, rule.agent
    if rule.agent_from_text:
        agent = _agent_before(clause[: m.start()]) or rule.agent
    if rule.kind == "shoot":
        action = "fires" if verb.startswith(("fir", "pull")) else "shoots"
    if rule.kind == "explosion" and _group(m, "verb2"):
        agent = rule.agent  # "an explosion" names no agent of its own
    noun = obj.split()[-1]
    if rule.category == "entity_emergence":
        agent = _normalise_np(_group(m, "agent", "agent2") or "a figure")
        noun = agent.split()[-1]
        obj = rule.object
    state = _state_from_text(clauses, found.clause, rule) or rule.state_change.format(
        obj=obj, agent=agent, noun=noun
    )
    instruction = rule.instruction.format(a=_article(noun), noun=noun)
    if rule.category == "entity_emergence" and agent.split()[0] == "some":
        instruction = f"some {noun} appear"
    return _make_interaction(agent, action, obj, state, instruction)


def _make_interaction(agent: str, action: str, obj: str, state: str, instruction: str) -> InteractionCaption:
    head = f"{agent[0].upper()}{agent[1:]} {action}"
    text = f"{head}; {state}." if obj in _ENV_OBJECTS else f"{head} {obj}: {state}."
    return InteractionCaption(
        agent=agent, action=action, object=obj, state_change=state, text=text, instruction=instruction
    )


# --------------------------------------------------------------------------------------------------
# Rule captioner
# --------------------------------------------------------------------------------------------------


class RuleCaptionerConfig(BaseModel):
    """Thresholds of the offline captioner. Scores are the interaction miner's (>= 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_support_score: float = Field(
        0.0, ge=0, description="A candidate at least this strong confirms an interaction the text names."
    )
    silent_min_score: float = Field(
        0.5, ge=0, description="A candidate at least this strong yields a generic interaction on its own."
    )
    brightness_delta: float = Field(
        6.0, gt=0, description="Mean grey-level change that counts as the scene getting darker/brighter."
    )
    max_scene_words: int = Field(40, ge=4, description="Longest scene description kept from the text.")


class RuleCaptioner:
    """Offline captioner: the scraped text, the camera motion and the visual candidate, combined by rules.

    An interaction is emitted when the text names one and a candidate at least ``min_support_score``
    strong backs it, or when the text names none and the candidate reaches ``silent_min_score``; in
    the latter case the caption is generic but still names a concrete agent and action. Same request
    ⇒ same result.
    """

    name = "rules"

    def __init__(self, config: RuleCaptionerConfig | None = None) -> None:
        self.config = config or RuleCaptionerConfig()

    def caption(self, request: CaptionRequest) -> CaptionResult:
        clauses = _clauses(clean_text(request.source_caption))
        found = _find(clauses)
        candidate = request.interaction
        interaction: InteractionCaption | None = None
        if found is not None:
            if candidate is not None and candidate.score >= self.config.min_support_score:
                interaction = _interaction_from_text(clauses, found)
        elif candidate is not None and candidate.score >= self.config.silent_min_score:
            interaction = self._generic(request, candidate)
        scene_clauses = clauses[: found.clause] if found is not None else clauses
        scene = self._scene(scene_clauses)
        captions = Captions(long=self._long(request, scene, interaction), short=self._short(request, scene))
        return CaptionResult(captions=captions, interaction=interaction, captioner=self.name)

    def _scene(self, clauses: list[str]) -> str:
        kept = [
            c
            for c in clauses
            if "camera" not in c
            and sum(w.isalpha() for w in c.split()) >= 2
            and not set(c.split()) <= _FILLER
        ]
        return _clip_words(", ".join(kept), self.config.max_scene_words)

    @staticmethod
    def _camera(request: CaptionRequest) -> str:
        return " ".join(clean_text(request.camera_motion).split()).rstrip(".")

    def _short(self, request: CaptionRequest, scene: str) -> str:
        if scene:
            return _one_line(_sentence(scene))
        camera = self._camera(request)
        if camera:
            return _one_line(_sentence(f"a first-person game scene; {camera}"))
        return "A first-person game scene."

    def _long(self, request: CaptionRequest, scene: str, interaction: InteractionCaption | None) -> str:
        sentences = [_sentence(scene) if scene else "A first-person game scene."]
        camera = self._camera(request)
        if camera:
            sentences.append(_sentence(camera))
        candidate = request.interaction
        if interaction is not None and candidate is not None:
            seconds = candidate.onset_frame / request.fps
            sentences.append(
                f"At about {seconds:.1f} s (frame {candidate.onset_frame}), {_lower_first(interaction.text)}"
            )
            size = request.frame_size
            if candidate.bbox is not None and not candidate.global_change and size is not None:
                where = region_phrase(candidate.bbox, size)
                if where not in interaction.text:
                    sentences.append(f"The change happens {where}.")
        else:
            sentences.append("No interaction changes the scene.")
        sentences.append(
            f"The clip lasts {request.num_frames / request.fps:.1f} s "
            f"({request.num_frames} frames at {request.fps:g} fps)."
        )
        return " ".join(sentences)

    def _generic(self, request: CaptionRequest, candidate: InteractionCandidate) -> InteractionCaption:
        """A candidate with no words for it: say what the pixels allow, with a concrete agent."""
        if candidate.global_change or candidate.bbox is None:
            delta = self._brightness_change(request, candidate.onset_frame)
            if delta is not None and delta <= -self.config.brightness_delta:
                return _make_interaction(
                    "the light",
                    "dims",
                    "the room",
                    "the whole scene grows darker and stays dark",
                    "make it darker",
                )
            if delta is not None and delta >= self.config.brightness_delta:
                return _make_interaction(
                    "the light",
                    "brightens",
                    "the room",
                    "the whole scene grows brighter and stays bright",
                    "make it brighter",
                )
            return _make_interaction(
                "the lighting",
                "shifts",
                "the room",
                "the light and colour of the whole scene change and stay changed",
                "change the lighting",
            )
        size = request.frame_size
        where = region_phrase(candidate.bbox, size) if size is not None else ""
        target = f"the object {where}" if where else "the object ahead"
        short_where = (
            where.replace(" of the view", "").replace("in the centre", "ahead") if where else "ahead"
        )
        return _make_interaction(
            "the player",
            "interacts with",
            target,
            "that part of the scene changes state and stays changed",
            f"interact with the object {short_where}",
        )

    @staticmethod
    def _brightness_change(request: CaptionRequest, onset: int) -> float | None:
        before = [f for f, i in zip(request.frames, request.frame_indices, strict=True) if i < onset]
        after = [f for f, i in zip(request.frames, request.frame_indices, strict=True) if i >= onset]
        if not before or not after:
            return None
        return float(np.mean([a.mean() for a in after[-1:]]) - np.mean([b.mean() for b in before[:1]]))


# --------------------------------------------------------------------------------------------------
# Chat captioner (OpenAI-compatible Chat Completions)
# --------------------------------------------------------------------------------------------------


class ChatCaptionerConfig(BaseModel):
    """Where and how to ask a VLM/LLM for captions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(description="Base URL of the OpenAI-compatible API, e.g. http://vlm:8000/v1.")
    model: str = Field(min_length=1, description="Model name sent with every request.")
    api_key: SecretStr | None = Field(None, description="Bearer token; overrides api_key_env.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable read for the key when api_key is unset."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request connect/read/write timeout.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries after the first attempt.")
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles on each retry.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest delay between attempts.")
    max_frames: int = Field(4, ge=0, le=32, description="Keyframes attached as images.")
    max_image_side: int = Field(768, ge=16, description="Longer image side is scaled down to this.")
    jpeg_quality: int = Field(85, ge=1, le=100)
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, description="Sent as max_tokens when set.")
    require_candidate: bool = Field(
        True, description="Drop the model's interaction when the visual miner found no candidate."
    )
    trust_env: bool = Field(True, description="Let httpx use proxy settings from the environment.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"endpoint must be an http(s) URL, got {value!r}")
        if value.endswith("/chat/completions"):
            value = value[: -len("/chat/completions")]
        return value

    def resolved_api_key(self) -> str | None:
        """The explicit key, else the one in ``api_key_env``, else None."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


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


def _strip_fences(content: str) -> str:
    text = content.strip()
    fenced = re.search(r"```(?:json|JSON)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        return fenced.group(1).strip()
    if not text.startswith("{") and "{" in text and "}" in text:
        return text[text.index("{") : text.rindex("}") + 1]
    return text


class _BadAnswer(ValueError):
    pass


def parse_answer(content: Any) -> tuple[Captions, InteractionCaption | None]:
    """Captions and interaction from a chat message's content (string or list of text parts)."""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise _BadAnswer("empty message content")
    try:
        data = json.loads(_strip_fences(content))
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
        self._api_key = config.resolved_api_key()
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
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

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
                    reason = f"HTTP {status}: {_snippet(response)}"
                    retry_after = _retry_after(response)
                elif not 200 <= status < 300:
                    reason = f"HTTP {status}: {_snippet(response)}"
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
            raise _BadAnswer(f"response body is not JSON: {_snippet(response)}") from exc
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


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    try:
        text = response.text
    except UnicodeDecodeError:
        text = repr(response.content[:limit])
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else (text or "<empty body>")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# --------------------------------------------------------------------------------------------------
# Composition and configuration
# --------------------------------------------------------------------------------------------------


class FallbackCaptioner:
    """Try ``primary``; on :class:`CaptionError` use ``fallback`` and mark the result '<name>(fallback)'."""

    def __init__(self, primary: Captioner, fallback: Captioner) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = f"{primary.name}|{fallback.name}"

    def close(self) -> None:
        for captioner in (self.primary, self.fallback):
            close = getattr(captioner, "close", None)
            if callable(close):
                close()

    def caption(self, request: CaptionRequest) -> CaptionResult:
        try:
            return self.primary.caption(request)
        except CaptionError as exc:
            log.warning(
                "%s failed for %s, using %s: %s", self.primary.name, request.clip_id, self.fallback.name, exc
            )
        result = self.fallback.caption(request)
        return result.model_copy(update={"captioner": f"{result.captioner}(fallback)"})


class CaptionerConfig(BaseModel):
    """Which captioner the curation pipeline uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["rules", "chat"] = "rules"
    chat: ChatCaptionerConfig | None = Field(None, description="Required when (and only when) kind is chat.")
    rules: RuleCaptionerConfig = Field(default_factory=RuleCaptionerConfig)
    fallback_to_rules: bool = Field(
        False, description="With kind chat: caption with rules when the endpoint fails."
    )

    @model_validator(mode="after")
    def _check(self) -> CaptionerConfig:
        if self.kind == "chat" and self.chat is None:
            raise ValueError("kind 'chat' needs a 'chat' section (endpoint, model, ...)")
        if self.kind != "chat" and self.chat is not None:
            raise ValueError(f"a 'chat' section is only allowed with kind 'chat', not {self.kind!r}")
        if self.fallback_to_rules and self.kind != "chat":
            raise ValueError("fallback_to_rules only applies to kind 'chat'")
        return self


def build_captioner(cfg: CaptionerConfig) -> Captioner:
    """The captioner a config describes."""
    rules = RuleCaptioner(cfg.rules)
    if cfg.kind == "rules":
        return rules
    assert cfg.chat is not None  # guaranteed by CaptionerConfig's validator
    chat = ChatCaptioner(cfg.chat)
    return FallbackCaptioner(chat, rules) if cfg.fallback_to_rules else chat


__all__ = [
    "CaptionError",
    "CaptionRequest",
    "CaptionResult",
    "Captioner",
    "CaptionerConfig",
    "ChatCaptioner",
    "ChatCaptionerConfig",
    "FallbackCaptioner",
    "InteractionCandidate",
    "RuleCaptioner",
    "RuleCaptionerConfig",
    "build_captioner",
    "clean_text",
    "encode_jpeg",
    "parse_answer",
    "pick_keyframes",
    "region_phrase",
]
