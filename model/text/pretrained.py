"""Frozen Hugging Face tokenizer + encoder pair → :class:`TextEncoding` (shared by MiniLM and T5).

Only local folders and safetensors are accepted: the checkpoint is never fetched and never unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from worldloop.model.text.encoder import TextEncoding, check_texts, masked_mean_pool

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Any one of these makes a folder's tokenizer loadable offline by AutoTokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.txt")


def check_checkpoint_folder(path: Path, *, what: str) -> Path:
    """Raise ValueError unless ``path`` holds config.json, safetensors weights and a tokenizer."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ValueError(f"{what} checkpoint folder {path} does not exist (give a local directory)")
    missing: list[str] = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {pickled}: convert them to safetensors, pickles are never loaded)" if pickled else ""
        missing.append(f"*.safetensors weights{hint}")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {', '.join(_TOKENIZER_FILES)})")
    if missing:
        raise ValueError(f"{what} checkpoint folder {path} lacks: {'; '.join(missing)}")
    return path


class FrozenPretrainedEncoder:
    """Runs a frozen encoder-only transformer and pools it; subclasses only load the pair.

    Outputs are float32 on ``device`` whatever the weights' dtype, so callers see one contract.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        *,
        dim: int,
        max_length: int,
        device: torch.device,
    ) -> None:
        self._tokenizer = tokenizer
        # Frozen: the instruction encoder is never trained in any stage (DESIGN.md §5.3).
        module: torch.nn.Module = model  # nn.Module's `to`: transformers' override confuses mypy
        self._model = module.to(device).eval().requires_grad_(False)
        self._dim = dim
        self._max_length = max_length
        self._device = device

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    def _hidden_states(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, L) token ids and mask → (B, L, D) last hidden states."""
        out = self._model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden: Tensor = out.last_hidden_state
        return hidden

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        """B texts → tokens (B, L, D), mask (B, L), pooled (B, D); L ≤ max_length (truncated)."""
        items = check_texts(texts)
        batch = self._tokenizer(
            items, padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
        )
        batch = {k: v.to(self._device) for k, v in batch.items()}
        # no_grad rather than inference_mode: the outputs feed cross-attention during training, and
        # inference tensors cannot be saved for backward.
        with torch.no_grad():
            hidden = self._hidden_states(batch).float()  # (B, L, D)
        mask = batch["attention_mask"].bool()  # (B, L)
        tokens = hidden * mask.unsqueeze(-1)  # zero the padding so callers cannot leak it by accident
        return TextEncoding(tokens=tokens, mask=mask, pooled=masked_mean_pool(tokens, mask))
