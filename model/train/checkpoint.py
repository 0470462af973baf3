"""Training checkpoints: everything a resumed run needs, with no pickle anywhere.

A checkpoint is a folder ``step-NNNNNNNN/`` holding

* ``model.safetensors`` — the whole model's weights (config in the metadata);
* ``ema.safetensors`` — the EMA of the trainable weights;
* ``optimizer.safetensors`` — every optimizer state tensor, keyed ``"{param_index}.{name}"``;
* ``NAME.safetensors`` + ``NAME_optimizer.safetensors`` — extra trained modules (the stage-3 critic);
* ``state.json`` — step, optimizer param-group hyper-parameters, scheduler state, RNG states (as
  lists of ints), and anything else small.

It is written to a temporary sibling folder and renamed into place, then ``latest`` (a one-line file
naming the folder) is replaced atomically: a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [kind, np.asarray(keys).tolist(), pos, has_gauss, cached],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor],
    state: dict[str, Any],
    metadata: dict[str, str] | None = None,
    keep: int = 2,
    extra: dict[str, tuple[nn.Module, torch.optim.Optimizer]] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata=metadata or {})
    save_file({k: v.cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    tensors, opt_meta = _optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    extra_meta = {}
    for part, (module, opt) in (extra or {}).items():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
            str(tmp / f"{part}.safetensors"),
        )
        extra_tensors, extra_meta[part] = _optimizer_tensors(opt)
        save_file(extra_tensors, str(tmp / f"{part}_optimizer.safetensors"))
    full_state = {"step": step, "optimizer": opt_meta, "extra": extra_meta, "rng": rng_state(), **state}
    (tmp / "state.json").write_text(json.dumps(full_state))
    for f in tmp.iterdir():
        with f.open("rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST}.{os.getpid()}"
    latest_tmp.write_text(name + "\n")
    os.replace(latest_tmp, root / LATEST)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder ``latest`` points to, or None when there is no complete checkpoint."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    folder = Path(root) / pointer.read_text().strip()
    return folder if (folder / "state.json").exists() else None


def load_checkpoint(
    folder: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ema: dict[str, torch.Tensor] | None,
    extra: dict[str, tuple[nn.Module, torch.optim.Optimizer]] | None = None,
) -> dict[str, Any]:
    """Restore weights (and optimizer, EMA, RNG when given); returns ``state.json``."""
    folder = Path(folder)
    weights = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder}: checkpoint does not fit the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    state = json.loads((folder / "state.json").read_text())
    if optimizer is not None:
        _load_optimizer(optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
    if ema is not None:
        for k, v in load_file(str(folder / "ema.safetensors")).items():
            ema[k].copy_(v)
    for name, (module, opt) in (extra or {}).items():
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        _load_optimizer(opt, load_file(str(folder / f"{name}_optimizer.safetensors")), state["extra"][name])
    set_rng_state(state["rng"])
    return state
