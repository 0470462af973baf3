"""Wan2.2 I2V-A14B checkpoints → our :class:`WorldModel` (and back, for tests and export).

Wan2.2 ships one folder per expert (``high_noise_model/``, ``low_noise_model/``), each holding
``diffusion_pytorch_model*.safetensors`` shards and a ``*.safetensors.index.json`` weight map. Our
expert modules use Wan's own parameter names, so the adapter is a prefix map (``experts.{i}.``) with
strict shape checks; parameters Wan does not have (camera encoder, interaction extractor) keep their
initialisation — the camera encoder's zero output keeps the pretrained model's behaviour at step 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from worldloop.model.arch.world_model import WorldModel
from worldloop.model.weights.safetensors_io import save_state

EXPERT_FOLDERS = ("high_noise_model", "low_noise_model")
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_NAME = "diffusion_pytorch_model.safetensors"
# Prefixes some exporters add in front of Wan's names.
STRIP_PREFIXES = ("model.", "module.")


@dataclass
class LoadReport:
    """What a Wan load touched: loaded keys per expert and our parameters left at their init."""

    loaded: dict[int, int] = field(default_factory=dict)
    not_in_checkpoint: list[str] = field(default_factory=list)


def _shard_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / SINGLE_NAME
    if single.exists():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise ValueError(f"{folder}: no safetensors weights (expected {INDEX_NAME} or {SINGLE_NAME})")
    return found


def _wan_name(key: str) -> str:
    for prefix in STRIP_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def expert_folders(root: Path, num_experts: int) -> list[Path]:
    """The per-expert folders under ``root`` (a single-expert model may be the folder itself)."""
    if num_experts == 1 and not (root / EXPERT_FOLDERS[0]).exists():
        return [root]
    folders = [root / name for name in EXPERT_FOLDERS[:num_experts]]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise ValueError(f"Wan2.2 layout needs {', '.join(EXPERT_FOLDERS)} under {root}; missing {missing}")
    return folders


@torch.no_grad()
def load_wan22_experts(model: WorldModel, root: str | Path) -> LoadReport:
    """Copy a Wan2.2-layout checkpoint into ``model``'s experts (in place, dtype cast to ours).

    Raises ValueError on an unknown key or a shape mismatch, naming both.
    """
    report = LoadReport()
    params = dict(model.named_parameters())
    touched: set[str] = set()
    for i, folder in enumerate(expert_folders(Path(root), model.cfg.num_experts)):
        count = 0
        for shard in _shard_files(folder):
            with safe_open(str(shard), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    ours = f"experts.{i}.{_wan_name(key)}"
                    if ours not in params:
                        raise ValueError(f"{shard.name}: key {key!r} has no counterpart ({ours!r})")
                    tensor = handle.get_tensor(key)
                    target = params[ours]
                    if tuple(tensor.shape) != tuple(target.shape):
                        raise ValueError(
                            f"{shard.name}: {key!r} has shape {tuple(tensor.shape)}, "
                            f"model expects {tuple(target.shape)} (preset mismatch?)"
                        )
                    target.copy_(tensor.to(target.dtype))
                    touched.add(ours)
                    count += 1
        report.loaded[i] = count
    report.not_in_checkpoint = sorted(set(params) - touched)
    return report


def export_wan22_layout(model: WorldModel, root: str | Path, *, shard_bytes: int = 2**30) -> Path:
    """Write the experts in Wan2.2's layout (folders, shards, index) — the inverse of the loader."""
    root = Path(root)
    for i, name in enumerate(EXPERT_FOLDERS[: model.cfg.num_experts]):
        folder = root / name
        state = {k: v for k, v in model.experts[i].state_dict().items()}
        shards: list[dict[str, Tensor]] = [{}]
        size = 0
        for key, tensor in state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = tensor
            size += nbytes
        weight_map = {}
        for n, shard in enumerate(shards, start=1):
            fname = f"diffusion_pytorch_model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_state(shard, folder / fname, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    return root
