"""The rollout that training and serving share: shapes, determinism, recache on a new instruction."""

from __future__ import annotations

import pytest
import torch

from worldloop.model import Rollout, WorldModel, tiny
from worldloop.model.camera import parse_action
from worldloop.model.text import HashingEncoder
from worldloop.model.vae import CausalVideoVAE


def _rollout(seed: int = 0) -> Rollout:
    torch.manual_seed(0)
    cfg = tiny()
    model = WorldModel(cfg).eval()
    for expert in model.experts:
        torch.nn.init.normal_(expert.head.head.weight, std=0.05)
    vae = CausalVideoVAE(cfg.vae).eval()
    return Rollout(
        model,
        vae=vae,
        text_encoder=HashingEncoder(dim=cfg.text_dim),
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(seed),
    )


def _image() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _play(rollout: Rollout, blocks: int, switch_at: int | None = None) -> tuple[torch.Tensor, int]:
    state, first = rollout.start(_image(), prompt="a torch-lit stone corridor")
    frames = [first]
    for i in range(blocks):
        instruction = "open the door" if switch_at is not None and i >= switch_at else None
        actions = [parse_action("w", mouse_dx=1.0)] * rollout.frames_per_block
        frames.append(rollout.step(state, actions, instruction=instruction))
    return torch.cat(frames, dim=2), state.recaches


def test_rollout_shapes_range_and_determinism() -> None:
    video, _ = _play(_rollout(), 3)
    per_block = tiny().causal.block_frames * 4
    assert video.shape == (1, 3, 1 + 3 * per_block, 32, 32)
    assert float(video.abs().max()) <= 1.0
    again, _ = _play(_rollout(), 3)
    assert torch.equal(video, again)
    other, _ = _play(_rollout(seed=5), 3)
    assert not torch.equal(video[:, :, 1:], other[:, :, 1:])


def test_new_instruction_recaches_once_and_changes_the_future() -> None:
    plain, recaches = _play(_rollout(), 4)
    switched, switched_recaches = _play(_rollout(), 4, switch_at=2)
    assert recaches == 0 and switched_recaches == 1  # same instruction again does not recache
    per_block = tiny().causal.block_frames * 4
    split = 1 + 2 * per_block
    assert torch.equal(plain[:, :, :split], switched[:, :, :split])  # the past is untouched
    assert not torch.allclose(plain[:, :, split:], switched[:, :, split:])


def test_rollout_rejects_bad_input() -> None:
    rollout = _rollout()
    with pytest.raises(ValueError, match="expects"):
        rollout.start(torch.zeros(1, 3, 48, 32), prompt="x")
    state, _ = rollout.start(_image(), prompt="x")
    with pytest.raises(ValueError, match="actions per block"):
        rollout.step(state, [parse_action("w")])


def test_bf16_rollout_runs_and_stays_close_to_fp32() -> None:
    """Serving runs bf16 weights; host-side text tokens (fp32) must be cast to the model's dtype."""
    fp32 = _rollout()
    video32, _ = _play(fp32, 2, switch_at=1)
    half = _rollout()
    half.model.to(torch.bfloat16)
    half.vae.to(torch.bfloat16)
    video16, recaches = _play(half, 2, switch_at=1)
    assert video16.dtype == torch.bfloat16 and recaches == 1
    assert float((video16.float() - video32).abs().mean()) < 0.05


def test_compiled_blocks_stream_the_same_video() -> None:
    """Regional torch.compile (a serving speed switch) changes kernels, not the stream."""
    from worldloop.model.arch.dit import compile_blocks

    eager, _ = _play(_rollout(), 4, switch_at=2)
    compiled_rollout = _rollout()
    assert compile_blocks(compiled_rollout.model) == 2 * tiny().num_layers
    compiled, recaches = _play(compiled_rollout, 4, switch_at=2)
    assert recaches == 1
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)
