"""Pluggable frozen instruction encoders (DESIGN.md §5.3): MiniLM by default, T5/umT5 at scale."""

from worldloop.model.text.cache import CachedTextEncoder, CacheStats
from worldloop.model.text.encoder import (
    TextEncoder,
    TextEncoderConfig,
    TextEncoderKind,
    TextEncoding,
    build_text_encoder,
    default_minilm_path,
    masked_mean_pool,
)
from worldloop.model.text.hashing import HashingEncoder
from worldloop.model.text.minilm import MiniLMEncoder
from worldloop.model.text.t5 import T5Encoder

__all__ = [
    "CacheStats",
    "CachedTextEncoder",
    "HashingEncoder",
    "MiniLMEncoder",
    "T5Encoder",
    "TextEncoder",
    "TextEncoderConfig",
    "TextEncoderKind",
    "TextEncoding",
    "build_text_encoder",
    "default_minilm_path",
    "masked_mean_pool",
]
