"""The offline rule captioner: an interaction lexicon over the scraped caption plus the pipeline's
camera-motion text and visual interaction candidate; deterministic, no network."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from worldloop.components.curation.captioning.base import (
    _FILLER,
    CaptionRequest,
    CaptionResult,
    InteractionCandidate,
    _article,
    _clauses,
    _clip_words,
    _lower_first,
    _one_line,
    _sentence,
    clean_text,
    region_phrase,
)
from worldloop.data import Captions, InteractionCaption

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
