"""Hashing text encoder: a deterministic, training-free, checkpoint-free fallback.

Each lower-cased word or punctuation mark is hashed (BLAKE2b, so stable across processes, unlike
``hash``) into the seed of a generator that draws its fixed Gaussian embedding; a start token is
prepended so even ``""`` has one real token. Limits, by design: no semantics beyond word identity
(``door`` and ``doors`` are unrelated), no word order or context (a word's vector is the same at every
position), every distinct word is its own vector (no vocabulary, no collisions to speak of). It exists
so tests of other modules get a real :class:`TextEncoder` without loading 90 MB of weights.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from worldloop.model.text.encoder import TextEncoding, check_texts, masked_mean_pool

_WORD = re.compile(r"\w+|[^\w\s]")
_START = "\x00<start>"  # cannot come out of _WORD, so it never equals a real word


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, in order."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=65536)
def _word_vector(word: str, dim: int, seed: int) -> Tensor:
    """(dim,) N(0, 1/dim) vector of ``word``, so embeddings have norm ≈ 1 like trained ones."""
    digest = hashlib.blake2b(f"{seed}:{word}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.randn(dim, generator=generator) / math.sqrt(dim)


class HashingEncoder:
    """Word-identity encoder: tokens (B, L, D) are per-word fixed random vectors, L ≤ ``max_length``
    counting the start token (later words are truncated); pooled is their normalised mean."""

    def __init__(
        self,
        dim: int = 384,
        *,
        max_length: int = 64,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if dim < 1 or max_length < 2:
            raise ValueError(
                f"need dim ≥ 1 and max_length ≥ 2 (start token + a word), got {dim}, {max_length}"
            )
        self._dim = dim
        self._max_length = max_length
        self._seed = seed
        self._device = torch.device(device)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        """B texts → tokens (B, L, D), mask (B, L), pooled (B, D)."""
        rows = [[_START, *split_words(t)][: self._max_length] for t in check_texts(texts)]
        length = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), length, self._dim)  # (B, L, D)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)  # (B, L)
        for i, words in enumerate(rows):
            tokens[i, : len(words)] = torch.stack([_word_vector(w, self._dim, self._seed) for w in words])
            mask[i, : len(words)] = True
        tokens, mask = tokens.to(self._device), mask.to(self._device)
        return TextEncoding(tokens=tokens, mask=mask, pooled=masked_mean_pool(tokens, mask))
