"""Whole-step compilation (issue 19): each denoising step of a block — the expert's forward against the
KV cache and the scheduler's update — as one compiled callable (CUDA graphs on CUDA; Inductor on this
CPU). It must stream what the eager rollout streams, and stop compiling once the window is full."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from worldloop.model import Rollout, WorldModel, tiny
from worldloop.model.camera import parse_action
from worldloop.model.config import CompileMode
from worldloop.model.diffusion.sampler import EulerScheduler, FewStepScheduler
from worldloop.model.text import HashingEncoder
from worldloop.model.vae import CausalVideoVAE

SIZE = 32
# Compiled and eager fp32 differ only by the order of floating-point sums: Inductor fuses the norms'
# and softmax's reductions and the scheduler's multiply-adds (FMA), and the compiled step attends over
# the whole cache buffer with its empty slots masked where the eager one slices them off. Measured on
# this CPU: under 1e-6 over the 7-block stream with a recache; 1e-5 is ~1/1000 of an 8-bit grey level.
ATOL = RTOL = 1e-5


def _rollout(compile: CompileMode = "off", *, anchor: float | None = None, pixels: bool = False) -> Rollout:
    torch.manual_seed(0)
    cfg = tiny().model_copy(update={"i2v_anchor": anchor, "i2v_warp_pixels": pixels})
    model = WorldModel(cfg).eval()
    for e in range(cfg.num_experts):  # a zero-initialised head would make every stream trivially equal
        torch.nn.init.normal_(model.expert(e).head.head.weight, std=0.05)
    return Rollout(
        model,
        vae=CausalVideoVAE(cfg.vae).eval(),
        text_encoder=HashingEncoder(dim=cfg.text_dim),
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(3),
        compile=compile,
    )


def _blocks(rollout: Rollout, count: int, *, switch_at: int) -> Iterator[torch.Tensor]:
    """Each block's decoded frames; the instruction changes (one recache) at block ``switch_at``."""
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    state, _ = rollout.start(image, prompt="a torch-lit stone corridor")
    for block in range(1, count + 1):
        actions = [parse_action("w+a" if block % 2 else "w", mouse_dx=1.0)] * rollout.frames_per_block
        yield rollout.step(state, actions, instruction="open the door" if block >= switch_at else None)
    assert state.recaches == 1


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(("anchor", "pixels"), [(None, False), (0.5, True)])
def test_compiled_step_streams_the_eager_video_and_stops_compiling_once_the_window_is_full(
    fresh_dynamo: None, anchor: float | None, pixels: bool
) -> None:
    window = tiny().causal.window_blocks
    blocks, switch_at = 2 * window + 3, window + 3  # fill, roll the ring twice, recache in between
    eager = list(_blocks(_rollout(anchor=anchor, pixels=pixels), blocks, switch_at=switch_at))
    rollout = _rollout("step", anchor=anchor, pixels=pixels)
    assert rollout.compiled is not None
    stream = _blocks(rollout, blocks, switch_at=switch_at)
    # Warm-up: blocks 1..window read a filling cache (the masked graph), block window + 1 a full one.
    compiled = [next(stream) for _ in range(window + 1)]
    assert counters["stats"]["unique_graphs"] == 2  # "filling" and "full"; both experts share them
    with torch._dynamo.config.patch(error_on_recompile=True):  # any recompile from here on raises
        compiled += list(stream)
    assert counters["stats"]["unique_graphs"] == 2
    assert len(compiled) == blocks
    torch.testing.assert_close(torch.cat(compiled, dim=2), torch.cat(eager, dim=2), atol=ATOL, rtol=RTOL)


def test_scheduler_update_is_its_step_without_the_step_index() -> None:
    """What the compiled step runs for every step index equals each step; few-step bit for bit."""
    g = torch.Generator().manual_seed(0)
    x, v, fresh = (torch.randn(2, 4, 3, 2, 2, generator=g) for _ in range(3))
    few = FewStepScheduler([1000.0, 750.0, 500.0, 250.0])
    for i, t in enumerate(few.timesteps):
        t_frames = torch.full((2, 3), t)
        t_next = torch.full((2, 3), few.next_timestep(i))
        last = i + 1 == len(few)
        expected, _ = few.step(i, x, v, t_frames, None if last else fresh)
        got = few.update(x, v, t_frames, t_next, torch.zeros_like(x) if last else fresh)
        assert torch.equal(got, expected), i
    euler = EulerScheduler([1000.0, 600.0, 200.0])
    for i, t in enumerate(euler.timesteps):
        t_batch = torch.full((2,), t)
        expected, _ = euler.step(i, x, v, t_batch)
        got = euler.update(x, v, t_batch, torch.full((2,), euler.next_timestep(i)), torch.zeros_like(x))
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # float32 vs host float64 σ


def test_the_whole_buffer_with_its_visible_mask_reads_what_the_visible_prefix_reads() -> None:
    """The fixed-size read of the cache (what compiled steps do) against the eager sliced read, at every
    fill level: sink only, partly filled window, full (mask None), and after a recache emptied it."""
    rollout = _rollout()
    model, cfg = rollout.model, rollout.model.cfg
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    state, _ = rollout.start(image, prompt="a corridor")
    cache, layout = state.cache, state.cache.layout
    f, (h, w) = cfg.causal.block_frames, cfg.latent_size(SIZE, SIZE)
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(1, cfg.latent_channels, f, h, w, generator=g)
    cond = torch.randn(1, cfg.in_channels - cfg.latent_channels, f, h, w, generator=g)
    camera_tokens = torch.randn(1, f * layout.tokens_per_frame, cfg.dim, generator=g)
    actions = [parse_action("w")] * rollout.frames_per_block
    seen = []
    for block in range(1, cfg.causal.window_blocks + 3):
        if block == cfg.causal.window_blocks + 2:  # a recache empties the window: the mask is back
            cache.invalidate_window()
        expert = model.expert(0)
        mask = cache.visible_mask(0, block)
        visible = cache.visible_index(0, block)
        seen.append(None if mask is None else int(mask.sum()))
        assert (mask is None) == (visible == layout.capacity)
        kv = cache.experts[0]
        common = {
            "timesteps": torch.full((1, f), 500.0),
            "context_kv": list(zip(kv.context_keys, kv.context_values, strict=True)),
            "context_mask": cache.context_mask,
            "camera_tokens": camera_tokens,
        }
        x = torch.cat([latents, cond], dim=1)
        with torch.no_grad():
            sliced, _ = expert(
                x,
                frame_start=layout.frame_start(block),
                past=[cache.past(0, layer, visible) for layer in range(cfg.num_layers)],
                **common,
            )
            grid = (f, h // cfg.patch_size[1], w // cfg.patch_size[2])
            whole, _ = expert(
                x,
                frame_start=0,
                past=[(kv.keys[layer], kv.values[layer]) for layer in range(cfg.num_layers)],
                past_mask=mask,
                rope=expert.rope(layout.frame_start(block), grid, x.device),
                **common,
            )
        torch.testing.assert_close(whole, sliced, atol=1e-6, rtol=1e-6)
        if block <= cfg.causal.window_blocks:
            rollout.denoise(state, actions)
    tokens = layout.tokens_per_frame
    assert seen == [tokens, tokens + layout.block_tokens, None, tokens]
