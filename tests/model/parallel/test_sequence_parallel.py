"""Ulysses sequence parallel == single device (STYLE.md required invariant; DESIGN.md §5.4).

Each test spawns N CPU processes on gloo. Workers save what they computed; the comparisons run here,
in the pytest process, against the same computation on one device. A worker's exception reaches pytest
as ``ProcessRaisedException`` carrying the worker's traceback.
"""

from __future__ import annotations

import concurrent.futures
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from worldloop.model import Conditioning, Rollout, WorldModel, i2v_condition, tiny
from worldloop.model.arch.dit import set_gradient_checkpointing
from worldloop.model.arch.transformer_block import SelfAttention
from worldloop.model.camera import parse_action
from worldloop.model.config import ModelConfig
from worldloop.model.parallel import SequenceParallel, apply_sequence_parallel
from worldloop.model.text import HashingEncoder
from worldloop.model.vae import CausalVideoVAE

SIZE = 32  # 4×4 latent → 2×2 patches: P = 4 tokens per frame, divisible by 2 and 4 workers
TOL = {"atol": 1e-5, "rtol": 1e-5}

Worker = Callable[..., None]  # (rank, tmp folder, *args)


def _entry(rank: int, world_size: int, tmp: str, fn: Worker, *args: Any) -> None:
    torch.set_num_threads(1)  # N workers share the CI machine's cores
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world_size)
    try:
        fn(rank, Path(tmp), *args)
    finally:
        dist.destroy_process_group()


def _spawn(fn: Worker, world_size: int, tmp: Path, *args: Any) -> None:
    mp.spawn(_entry, args=(world_size, str(tmp), fn, *args), nprocs=world_size, join=True)


# -- the model, built identically in every process (same seed → same weights) ------------------------
def _model(cfg: ModelConfig | None = None) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(cfg or tiny()).eval()
    # Zero-initialised outputs would make every comparison trivially equal: give them weights.
    for expert in model.experts:
        torch.nn.init.normal_(expert.head.head.weight, std=0.05)
    torch.nn.init.normal_(model.camera_encoder.out.weight, std=0.05)
    return model


def _rollout(model: WorldModel, size: int = SIZE) -> Rollout:
    torch.manual_seed(0)
    vae = CausalVideoVAE(model.cfg.vae).eval()
    return Rollout(
        model,
        vae=vae,
        text_encoder=HashingEncoder(dim=model.cfg.text_dim),
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(7),
    )


def _play(rollout: Rollout, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """start + 3 blocks holding W, a new instruction (recache) + 2 blocks: frames and self-attn keys."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    state, first = rollout.start(image, prompt="a torch-lit stone corridor")
    frames = [first]
    for i in range(5):
        actions = [parse_action("w", mouse_dx=1.0)] * rollout.frames_per_block
        frames.append(rollout.step(state, actions, instruction="open the door" if i >= 3 else None))
    assert state.recaches == 1
    keys = torch.stack([kv.keys for kv in state.cache.experts])  # (E, layers, B, capacity, H, Dh)
    return torch.cat(frames, dim=2), keys


def _rollout_worker(rank: int, tmp: Path) -> None:
    model = _model()
    sp = apply_sequence_parallel(model)
    frames, keys = _play(_rollout(model))
    torch.save({"frames": frames, "keys": keys}, tmp / f"rollout{rank}.pt")
    sp.remove()  # back to one device: full-head caches, no hooks
    assert model.cache_heads is None
    assert all(m.head_exchange is None for m in model.modules() if isinstance(m, SelfAttention))
    assert model.new_cache(batch=1, height=SIZE, width=SIZE).experts[0].keys.shape[-2] == model.cfg.num_heads


def _worker_slots(keys: torch.Tensor, sp_rank: int, world: int, model: WorldModel) -> torch.Tensor:
    """Single-device cache keys → what worker ``sp_rank`` holds: its heads, each block worker-major."""
    heads = model.cfg.num_heads // world
    out = keys[..., sp_rank * heads : (sp_rank + 1) * heads, :].clone()  # (E, layers, B, capacity, H/N, Dh)
    layout = model.layout(model.cfg.tokens_per_frame(SIZE, SIZE))
    p = layout.tokens_per_frame
    for block in range(layout.num_sink_blocks + layout.window_blocks):
        start, end = layout.slot(block)
        f = layout.frames_in_block(block)
        order = torch.arange(f * p).unflatten(0, (f, world, p // world)).transpose(0, 1).flatten()
        out[:, :, :, start:end] = out[:, :, :, start:end][:, :, :, order]
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_rollout_with_recache_equals_single_device(world: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _spawn(_rollout_worker, world, Path(tmp))
        results = [torch.load(Path(tmp) / f"rollout{r}.pt") for r in range(world)]
    model = _model()
    frames, keys = _play(_rollout(model))
    heads = model.cfg.num_heads // world
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["frames"], frames, **TOL)
        assert result["keys"].shape[-2] == heads  # the cache holds H/N heads of every token
        torch.testing.assert_close(result["keys"], _worker_slots(keys, rank, world, model), **TOL)


# -- training forward (block-causal mask over the full sequence) and its gradients -------------------
def _training_inputs(model: WorldModel) -> tuple[dict[str, Any], torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    cfg, batch, blocks = model.cfg, 3, 2
    t, h = 1 + blocks * cfg.causal.block_frames, SIZE // 8
    latents = torch.randn(batch, cfg.latent_channels, t, h, h, generator=g)
    # samples 0 and 2 pick the high-noise expert, sample 1 the low-noise one
    levels = torch.tensor([[950.0, 990.0], [300.0, 500.0], [920.0, 100.0]])
    timesteps = torch.cat([torch.zeros(batch, 1), levels.repeat_interleave(cfg.causal.block_frames, 1)], 1)
    text = torch.randn(batch, 6, cfg.text_dim, generator=g)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[0, 4:] = False
    inputs = {
        "latents": latents,
        "timesteps": timesteps,
        "cond": i2v_condition(latents[:, :, :1], num_frames=t, temporal_stride=4),
        "camera": torch.randn(batch, t, 24, SIZE, SIZE, generator=g),
        "conditioning": Conditioning(text, mask),
    }
    return inputs, torch.randn(latents.shape, generator=g)


Inputs = Callable[[WorldModel], tuple[dict[str, Any], torch.Tensor]]  # model inputs, output weight


def _train_step(
    model: WorldModel,
    sp: SequenceParallel | None,
    *,
    checkpointing: bool,
    make_inputs: Inputs = _training_inputs,
    causal: bool = True,
) -> dict[str, Any]:
    model.train()
    set_gradient_checkpointing(model, checkpointing)  # recompute re-runs the exchanges in backward
    inputs, weight = make_inputs(model)
    out = model(**inputs, causal=causal)
    (out * weight).sum().backward()
    if sp is not None:
        sp.reduce_gradients()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"out": out.detach(), "grads": grads}


def _training_worker(rank: int, tmp: Path, checkpointing: bool) -> None:
    model = _model()
    result = _train_step(model, apply_sequence_parallel(model), checkpointing=checkpointing)
    torch.save(result, tmp / f"train{rank}.pt")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_forward_and_gradients_equal_single_device(checkpointing: bool) -> None:
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        _spawn(_training_worker, world, Path(tmp), checkpointing)
        results = [torch.load(Path(tmp) / f"train{r}.pt") for r in range(world)]
    assert_steps_equal(results, _train_step(_model(), None, checkpointing=False))


def assert_steps_equal(results: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    """Every worker's output and summed gradients equal the one-process step's."""
    for result in results:
        torch.testing.assert_close(result["out"], expected["out"], **TOL)
        assert result["grads"].keys() == expected["grads"].keys()
        for name, grad in expected["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, atol=1e-4, rtol=1e-4, msg=name)


# -- clear errors ------------------------------------------------------------------------------------
def _errors_worker(rank: int, tmp: Path) -> None:
    one_head = tiny().model_copy(update={"num_heads": 1})
    with pytest.raises(ValueError, match="1 attention heads over 2 workers"):
        apply_sequence_parallel(_model(one_head))
    model = _model()
    apply_sequence_parallel(model)
    with pytest.raises(ValueError, match="already sequence parallel"):
        apply_sequence_parallel(model)
    # 48×48 → 6×6 latent → 3×3 = 9 tokens per frame: not a multiple of 2 (raised before any exchange)
    with pytest.raises(ValueError, match="multiple of 2"):
        _rollout(model, size=48).start(torch.zeros(1, 3, 48, 48), prompt="x")


def test_clear_errors_for_indivisible_heads_and_tokens() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _spawn(_errors_worker, 2, Path(tmp))


def _no_group_worker() -> str:
    assert not dist.is_initialized()
    try:
        apply_sequence_parallel(_model())
    except ValueError as err:
        return str(err)
    return "no error"


def test_needs_an_initialised_process_group() -> None:
    # A fresh process: earlier tests in this one may have left a default group initialised.
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=torch.multiprocessing.get_context("spawn")
    ) as pool:
        message = pool.submit(_no_group_worker).result(timeout=300)
    assert "init_process_group" in message
