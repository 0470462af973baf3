"""Save/load a :class:`WorldModel` as ``model.safetensors`` + the config in its metadata, atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from worldloop.model.arch.world_model import WorldModel
from worldloop.model.config import ModelConfig

CONFIG_KEY = "worldloop.model_config"


def save_state(
    tensors: dict[str, Tensor], path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` to ``path`` via a temp file + rename (a crash leaves the old file intact)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file. Anything else (e.g. a pickle) is refused."""
    source = Path(path)
    if source.suffix != ".safetensors":
        raise ValueError(f"{source}: weights must be a .safetensors file (pickled checkpoints are refused)")
    with safe_open(str(source), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        return tensors, dict(handle.metadata() or {})


def save_model(model: WorldModel, path: str | os.PathLike[str]) -> Path:
    """Save weights with the :class:`ModelConfig` (JSON) in the file's metadata."""
    return save_state(model.state_dict(), path, metadata={CONFIG_KEY: model.cfg.model_dump_json()})


def load_model(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> WorldModel:
    """Rebuild the model from a :func:`save_model` file; every parameter must be present."""
    tensors, metadata = load_state(path)
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: no {CONFIG_KEY} metadata; was it written by save_model?")
    cfg = ModelConfig.model_validate(json.loads(metadata[CONFIG_KEY]))
    with torch.device("meta"):
        model = WorldModel(cfg)
    model.load_state_dict(tensors, strict=True, assign=True)
    _materialise_buffers(model)
    return model.to(device)


def _materialise_buffers(model: nn.Module) -> None:
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                raise ValueError(f"buffer {name} missing from checkpoint")
