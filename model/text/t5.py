"""T5 / mT5 / umT5 *encoder* from a local folder: the at-scale instruction encoder (DESIGN.md §5.3).

Wan2.x conditions on umT5-XXL encoder states; this loads just the encoder stack (a full seq2seq
checkpoint works too: its decoder weights are ignored), safetensors only, tokenizer from the same folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from worldloop.model.text.pretrained import FrozenPretrainedEncoder, check_checkpoint_folder

logger = logging.getLogger(__name__)

_SUPPORTED = ("t5", "mt5", "umt5")


def _encoder_class(model_type: str) -> type:
    """transformers encoder-only class for a config ``model_type``."""
    from transformers import MT5EncoderModel, T5EncoderModel, UMT5EncoderModel

    classes: dict[str, type] = {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}
    return classes[model_type]


class T5Encoder(FrozenPretrainedEncoder):
    """Frozen T5-family encoder; D = ``d_model``. T5 uses relative positions, so ``max_length`` has no
    checkpoint limit; the tokenizer appends ``</s>``, which counts towards it."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_length: int = 64,
        device: torch.device | str = "cpu",
    ) -> None:
        from transformers import AutoTokenizer

        folder = check_checkpoint_folder(Path(path), what="T5")
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type not in _SUPPORTED:
            raise ValueError(
                f"{folder}/config.json has model_type={model_type!r}; expected one of {_SUPPORTED}"
            )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer in {folder} defines no pad token; batches cannot be padded")
        model = _encoder_class(model_type).from_pretrained(  # type: ignore[attr-defined]
            folder, local_files_only=True, use_safetensors=True
        )
        logger.info("loaded %s text encoder from %s (dim %d)", model_type, folder, model.config.d_model)
        super().__init__(
            tokenizer,
            model,
            dim=int(model.config.d_model),
            max_length=max_length,
            device=torch.device(device),
        )
