"""Pluggable captioners for curated clips (DESIGN.md §3).

Every curated clip needs three pieces of text: a long scene caption (several sentences), a short one
(one line) and, when the clip shows one, an interaction caption in the paper's sense: an action by a
clear agent that triggers a state transition with clear causality and physical or logical validity.

Two captioners speak the same :class:`Captioner` protocol:

* :class:`RuleCaptioner` (the offline default) reads the scraped caption with a small verb/noun
  lexicon for the three interaction categories (environment, character action, entity emergence),
  combines it with the pipeline's camera-motion text and visual interaction candidate, and is fully
  deterministic with no network.
* :class:`ChatCaptioner` (``vlm_captioner.py``) asks a VLM/LLM behind an OpenAI-compatible Chat
  Completions endpoint through the platform's :class:`~worldloop.platform.chat.ChatClient`, sending
  keyframes as JPEG data URLs and validating the JSON answer.

:class:`FallbackCaptioner` chains the two; :func:`build_captioner` turns a config into a captioner.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worldloop.components.curation.captioning.base import (
    Captioner,
    CaptionError,
    CaptionRequest,
    CaptionResult,
    InteractionCandidate,
    clean_text,
    region_phrase,
)
from worldloop.components.curation.captioning.rules import RuleCaptioner, RuleCaptionerConfig
from worldloop.components.curation.captioning.vlm_captioner import (
    ChatCaptioner,
    ChatCaptionerConfig,
    parse_answer,
    pick_keyframes,
)
from worldloop.platform.chat import encode_jpeg

log = logging.getLogger(__name__)

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
