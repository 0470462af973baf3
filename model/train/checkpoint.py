"""Training checkpoints: everything a resumed run needs, with no pickle anywhere.

A checkpoint is a folder ``step-NNNNNNNN/`` holding

* ``model.safetensors`` — the whole primary module's weights (the world model; config in the metadata),
  or ``vae.safetensors`` when the primary module is the VAE (stage 0: the checkpoint holds no DiT);
* ``ema.safetensors`` — the EMA of its trainable weights;
* ``optimizer.safetensors`` — every optimizer state tensor, keyed ``"{param_index}.{name}"``;
* ``NAME.safetensors`` + ``NAME_optimizer.safetensors`` — extra trained modules (the stage-3 critic);
* ``NAME.safetensors`` alone — frozen modules a resumed run needs as they were (the stage-3 teacher,
  and ``vae.safetensors``: the VAE travels with every checkpoint);
* ``spec.json`` — how to rebuild the model stack (:mod:`worldloop.model.spec`), when the trainer has one;
* ``lineage.json`` — the data every stage so far read (:mod:`worldloop.data.lineage`);
* ``state.json`` — step, optimizer param-group hyper-parameters, scheduler state, RNG states (as
  lists of ints), and anything else small.

It is written to a temporary sibling folder and renamed into place, then ``latest`` (a one-line file
naming the folder) is replaced atomically: a reader never sees half a checkpoint.

Data parallelism. Rank 0 writes the checkpoint; what it needs from the other ranks is collected first,
on every rank: ZeRO-3 parameters are partitioned, so :func:`gathered_state_dict` assembles full tensors
one parameter at a time (``deepspeed.zero.GatheredParameters``) and :func:`gather_shards` does the
same for tensors kept per partition (the EMA). A ZeRO optimizer (stage ≥ 1) holds each rank's
partition of the optimizer state: every rank writes its own ``OPT.rank{r}.safetensors`` into a staging
folder (:func:`save_optimizer_shard`) that rank 0 moves into the checkpoint (``shards=``), and a
resumed rank reads its own file back. Weights are loaded into the plain module *before* DeepSpeed
wraps it (:func:`load_weights`), so ZeRO-1/2 take their fp32 master copy and ZeRO-3 its partitions
from the loaded values; the rest follows once the engine exists (:func:`load_training_state`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from worldloop.model.spec import ModelSpec, write_spec

LATEST = "latest"
Weights = nn.Module | Mapping[str, Tensor]  # a module, or its (gathered) state dict


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


def _cpu_weights(weights: Weights) -> dict[str, Tensor]:
    items = weights.state_dict() if isinstance(weights, nn.Module) else weights
    return {k: v.detach().cpu().contiguous() for k, v in items.items()}


def _shard_name(optimizer_file: str, rank: int) -> str:
    return f"{optimizer_file}.rank{rank}.safetensors"


def checkpoint_name(step: int) -> str:
    """The folder name of checkpoint ``step`` (``step-NNNNNNNN``)."""
    return f"step-{step:08d}"


def save_optimizer_shard(staging: str | Path, optimizer_file: str, optimizer: torch.optim.Optimizer) -> Path:
    """This rank's optimizer-state tensors into ``staging`` (``optimizer_file`` is e.g. "optimizer");
    returns the file written."""
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    tensors, _ = _optimizer_tensors(optimizer)
    rank = dist.get_rank() if dist.is_initialized() else 0
    path = staging / _shard_name(optimizer_file, rank)
    save_file(tensors, str(path))
    return path


def missing_shards(staging: str | Path, optimizer_file: str, world: int) -> list[int]:
    """The ranks whose ``optimizer_file`` shard is not in ``staging`` (ranks that share no folder)."""
    return [r for r in range(world) if not (Path(staging) / _shard_name(optimizer_file, r)).is_file()]


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: Weights,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor],
    state: dict[str, Any],
    metadata: dict[str, str] | None = None,
    keep: int = 2,
    extra: dict[str, tuple[Weights, torch.optim.Optimizer]] | None = None,
    frozen: dict[str, Weights] | None = None,
    shards: str | Path | None = None,
    num_shards: int | None = None,
    spec: ModelSpec | None = None,
    model_file: str = "model",
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` checkpoints.

    ``model``, the ``extra`` and the ``frozen`` modules may be given as full state dicts (gathered from
    ZeRO-3 partitions). ``shards``: a staging folder of every rank's :func:`save_optimizer_shard` files, moved
    into the checkpoint in place of rank 0's ``optimizer.safetensors`` (and ``NAME_optimizer``).
    ``num_shards``: the ranks whose shards the checkpoint holds (default: the shard files in ``shards``;
    ranks that share no folder with rank 0 deliver theirs beside the checkpoint themselves).
    ``spec``: written as ``spec.json`` inside the folder before it is renamed into place.
    ``model_file``: the primary module's file name (``vae`` when it is the VAE).
    ``files``: more files (name → bytes, e.g. ``lineage.json``) written inside the folder likewise.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = root / name
    tmp = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_cpu_weights(model), str(tmp / f"{model_file}.safetensors"), metadata=metadata or {})
    save_file({k: v.cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    tensors, opt_meta = _optimizer_tensors(optimizer)
    if shards is None:
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    extra_meta = {}
    for part, (module, opt) in (extra or {}).items():
        save_file(_cpu_weights(module), str(tmp / f"{part}.safetensors"))
        extra_tensors, extra_meta[part] = _optimizer_tensors(opt)
        if shards is None:
            save_file(extra_tensors, str(tmp / f"{part}_optimizer.safetensors"))
    for part, module in (frozen or {}).items():
        save_file(_cpu_weights(module), str(tmp / f"{part}.safetensors"))
    counted = 0
    if shards is not None:
        for f in sorted(Path(shards).iterdir()):
            os.replace(f, tmp / f.name)
            counted += f.name.startswith("optimizer.rank")
        shutil.rmtree(shards, ignore_errors=True)
    num_shards = counted if num_shards is None else num_shards
    full_state = {
        "step": step,
        "optimizer": opt_meta,
        "extra": extra_meta,
        "optimizer_shards": num_shards,
        "rng": rng_state(),
        **state,
    }
    (tmp / "state.json").write_text(json.dumps(full_state))
    if spec is not None:
        write_spec(tmp, spec)
    for file_name, data in (files or {}).items():
        (tmp / file_name).write_bytes(data)
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


def weights_sha256(tensors: Mapping[str, Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes, in name order: the same for a module
    and for any safetensors file holding its weights, whatever the file's metadata."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder ``latest`` points to, or None when there is no complete checkpoint."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    folder = Path(root) / pointer.read_text().strip()
    return folder if (folder / "state.json").exists() else None


def load_weights(
    folder: str | Path,
    *,
    model: nn.Module,
    extra: Mapping[str, nn.Module] | None = None,
    model_file: str = "model",
) -> None:
    """Restore the weights of ``model`` (from ``model_file``.safetensors) and of the ``extra`` or frozen
    modules on this rank, before DeepSpeed wraps them."""
    folder = Path(folder)
    weights = load_file(str(folder / f"{model_file}.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder}: checkpoint does not fit the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, module in (extra or {}).items():
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))


def _optimizer_file(folder: Path, name: str, state: dict[str, Any], rank: int) -> Path:
    shards = int(state.get("optimizer_shards", 0))
    if not shards:
        return folder / f"{name}.safetensors"
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world != shards:
        raise ValueError(
            f"{folder}: the optimizer state is partitioned over {shards} ranks (ZeRO); "
            f"resume with {shards} processes, not {world}"
        )
    return folder / _shard_name(name, rank)


def load_training_state(
    folder: str | Path,
    *,
    optimizer: torch.optim.Optimizer | None,
    ema: dict[str, torch.Tensor] | None,
    extra: dict[str, torch.optim.Optimizer] | None = None,
) -> dict[str, Any]:
    """Restore optimizer state (this rank's shard when partitioned), EMA and RNG; returns ``state.json``."""
    folder = Path(folder)
    state: dict[str, Any] = json.loads((folder / "state.json").read_text())
    rank = dist.get_rank() if dist.is_initialized() else 0
    if optimizer is not None:
        path = _optimizer_file(folder, "optimizer", state, rank)
        _load_optimizer(optimizer, load_file(str(path)), state["optimizer"])
    if ema is not None:
        for k, v in load_file(str(folder / "ema.safetensors")).items():
            ema[k].copy_(v)
    for name, opt in (extra or {}).items():
        path = _optimizer_file(folder, f"{name}_optimizer", state, rank)
        _load_optimizer(opt, load_file(str(path)), state["extra"][name])
    set_rng_state(state["rng"])
    return state


def load_checkpoint(
    folder: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ema: dict[str, torch.Tensor] | None,
    extra: dict[str, tuple[nn.Module, torch.optim.Optimizer]] | None = None,
) -> dict[str, Any]:
    """Restore weights (and optimizer, EMA, RNG when given); returns ``state.json``."""
    extra = extra or {}
    load_weights(folder, model=model, extra={name: module for name, (module, _) in extra.items()})
    return load_training_state(
        folder, optimizer=optimizer, ema=ema, extra={name: opt for name, (_, opt) in extra.items()}
    )


@contextlib.contextmanager
def optimizer_state_access(*engines: Any) -> Iterator[None]:
    """While inside, the wrapped torch optimizers' ``state_dict`` / ``load_state_dict`` work.

    ZeRO-1/2 keep their fp32 partitions in the torch optimizer's param groups; ZeRO-3 steps one
    sub-group at a time and leaves the groups empty in between, so the partitions are put back for the
    duration (what DeepSpeed's own ZeRO-3 ``state_dict`` does).
    """
    zero3 = [e.optimizer for e in engines if hasattr(e.optimizer, "_set_fp32_optimizer_param_groups")]
    for opt in zero3:
        opt._set_fp32_optimizer_param_groups()
    try:
        yield
    finally:
        for opt in zero3:
            opt._clear_fp32_optimizer_param_groups()


# -- ZeRO-3: full tensors from partitions --------------------------------------------------------------
def is_partitioned(param: Tensor) -> bool:
    """A ZeRO-3 parameter: ``param.data`` is a placeholder, ``param.ds_tensor`` this rank's partition."""
    return hasattr(param, "ds_tensor")


def local_shard(param: Tensor) -> Tensor:
    """This rank's part of ``param``: its ZeRO-3 partition (flat, zero-padded) or the tensor itself."""
    return param.ds_tensor if is_partitioned(param) else param  # type: ignore[attr-defined,no-any-return]


def shard_of(full: Tensor, param: Tensor) -> Tensor:
    """The part of ``full`` (shaped like ``param``) that :func:`local_shard` holds on this rank.

    ZeRO-3 splits the flattened tensor into ``world`` equal slices, rank-major, the last one padded.
    """
    if not is_partitioned(param):
        return full
    size = local_shard(param).numel()
    start = dist.get_rank() * size
    chunk = full.reshape(-1)[start : start + size]
    return torch.cat([chunk, chunk.new_zeros(size - chunk.numel())])


def gather_shards(shards: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Full CPU tensors on rank 0 ({} elsewhere) from every rank's :func:`local_shard`-shaped
    ``shards`` of ``params``. A collective: every rank calls it with the same names in the same order."""
    rank, world = dist.get_rank(), dist.get_world_size()
    out: dict[str, Tensor] = {}
    for name, part in shards.items():
        param = params[name]
        if not is_partitioned(param):
            full = part
        else:
            pieces = [torch.empty_like(part) for _ in range(world)] if rank == 0 else None
            dist.gather(part.contiguous(), pieces, dst=0)
            full = torch.cat(pieces)[: param.ds_numel].view(param.ds_shape) if pieces else part  # type: ignore[attr-defined]
        if rank == 0:
            out[name] = full.detach().cpu().clone()
    return out


def gathered_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` as full CPU tensors on rank 0 ({} elsewhere), gathering ZeRO-3 partitions
    one parameter at a time so no rank ever holds more than one full parameter beyond its partitions.
    A collective under ZeRO-3: every rank calls it."""
    import deepspeed

    rank = dist.get_rank() if dist.is_initialized() else 0
    out: dict[str, Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if is_partitioned(tensor):
            with deepspeed.zero.GatheredParameters([tensor]):
                if rank == 0:
                    out[name] = tensor.detach().cpu().clone()
        elif rank == 0:
            out[name] = tensor.detach().cpu().clone()
    return out


def check_resumable(folder: str | Path, *, zero_stage: int, world: int) -> None:
    """Optimizer state fits only the ZeRO stage that wrote it (ZeRO ≥ 1 keeps it flattened per
    partition), and then only the same number of processes."""
    state = json.loads((Path(folder) / "state.json").read_text())
    zero, written = int(state["config"]["zero_stage"]), int(state["world_size"])
    if zero != zero_stage or (zero >= 1 and written != world):
        raise ValueError(
            f"{folder} was written by ZeRO-{zero} on {written} process(es); its optimizer state resumes "
            f"only there (this run: ZeRO-{zero_stage} on {world} process(es))"
        )
