"""LRU of encoded prompts, so a standing instruction is not re-encoded for every generated block.

The rollout asks for the current instruction's context once per block (DESIGN.md §5.4), but the
instruction only changes when the player types; caching per text makes those calls a lookup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from worldloop.model.text.encoder import TextEncoder, TextEncoding, check_texts


@dataclass(frozen=True)
class CacheStats:
    """Lookups served from the cache (``hits``) and texts sent to the encoder (``misses``)."""

    hits: int
    misses: int
    size: int
    capacity: int


class CachedTextEncoder:
    """Wraps a :class:`TextEncoder`; remembers the last ``capacity`` distinct texts.

    Each text is stored unpadded — tokens (L_i, D), pooled (D) — and batches are re-padded on the way
    out, so a cached batch equals the wrapped encoder's padded batch (pretrained encoders mask the
    padding, so a text's states do not depend on its batch-mates beyond float round-off). Misses of
    one call are encoded together in one batch. Thread-safe: serving may encode from several requests.
    """

    def __init__(self, encoder: TextEncoder, *, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be ≥ 1, got {capacity}")
        self._encoder = encoder
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def dim(self) -> int:
        return self._encoder.dim

    @property
    def max_length(self) -> int:
        return self._encoder.max_length

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._capacity)

    def clear(self) -> None:
        """Forget every entry (e.g. after swapping the wrapped encoder's weights)."""
        with self._lock:
            self._entries.clear()

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        """B texts → TextEncoding, encoding only texts not seen among the last ``capacity``."""
        items = check_texts(texts)
        with self._lock:
            found = {t: self._entries[t] for t in dict.fromkeys(items) if t in self._entries}
            for text in found:
                self._entries.move_to_end(text)
            missing = [t for t in dict.fromkeys(items) if t not in found]
            if missing:
                rows = _unpad(self._encoder.encode(missing))
                for text, row in zip(missing, rows, strict=True):
                    self._entries[text] = found[text] = row
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
            self._hits += len(items) - len(missing)
            self._misses += len(missing)
        return _pad([found[t] for t in items])


def _unpad(encoded: TextEncoding) -> list[tuple[Tensor, Tensor]]:
    """TextEncoding (B, L, D) → [(tokens (L_i, D), pooled (D))], one per text."""
    return [(encoded.tokens[i, encoded.mask[i]], encoded.pooled[i]) for i in range(encoded.batch_size)]


def _pad(rows: list[tuple[Tensor, Tensor]]) -> TextEncoding:
    """[(tokens (L_i, D), pooled (D))] → zero-padded TextEncoding (B, max L_i, D)."""
    first_tokens = rows[0][0]
    length = max(tok.shape[0] for tok, _ in rows)
    tokens = first_tokens.new_zeros(len(rows), length, first_tokens.shape[-1])  # (B, L, D)
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=first_tokens.device)  # (B, L)
    for i, (tok, _) in enumerate(rows):
        tokens[i, : tok.shape[0]] = tok
        mask[i, : tok.shape[0]] = True
    return TextEncoding(tokens=tokens, mask=mask, pooled=torch.stack([p for _, p in rows]))
