"""One block sampler: serving's Rollout and the Self-Forcing training rollout denoise through the same
``denoise_block``; with the same weights, noise and inputs they agree bit for bit."""

from __future__ import annotations

import pytest
import torch

from worldloop.model import Rollout, WorldModel, tiny
from worldloop.model.arch.world_model import i2v_condition
from worldloop.model.block_sampler import BlockNoise, denoise_block
from worldloop.model.camera import parse_action
from worldloop.model.camera.plucker import actions_to_camera
from worldloop.model.diffusion.sampler import EulerScheduler, FewStepScheduler, sample
from worldloop.model.distill import self_forcing_rollout
from worldloop.model.text import HashingEncoder
from worldloop.model.vae import CausalVideoVAE

SIZE = 32


def _rollout(seed: int, *, pixels: bool = False) -> Rollout:
    torch.manual_seed(0)
    cfg = tiny().model_copy(update={"i2v_warp_pixels": pixels})
    model = WorldModel(cfg).eval()
    for expert in model.experts:
        torch.nn.init.normal_(expert.head.head.weight, std=0.05)
    return Rollout(
        model,
        vae=CausalVideoVAE(cfg.vae).eval(),
        text_encoder=HashingEncoder(dim=cfg.text_dim),
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("pixels", [False, True])
def test_training_rollout_under_no_grad_equals_the_serving_rollout_bit_for_bit(pixels: bool) -> None:
    """Three blocks with a new instruction at the second: one recache in each, the same video. With
    ``i2v_warp_pixels`` serving warps each block's views from the image, training takes the whole
    path's views once (``i2v_stills``): the same latents."""
    rollout, blocks = _rollout(seed=11, pixels=pixels), 3
    model, cfg = rollout.model, rollout.model.cfg
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    keys = ["w", "a", "w+d"]
    state, _ = rollout.start(image, prompt="a torch-lit stone corridor")
    reference = state.reference.clone()
    served, cameras = [reference], []
    track = actions_to_camera([parse_action("none")], width=SIZE, height=SIZE, fov_deg=cfg.fov_deg)
    cameras.append(rollout._camera(track.c2w, track.intrinsics, 1))
    for k in range(blocks):
        actions = [parse_action(keys[k], mouse_dx=0.5)] * rollout.frames_per_block
        track = actions_to_camera(
            actions, width=SIZE, height=SIZE, fov_deg=cfg.fov_deg, motion=cfg.motion, start=state.camera
        )
        cameras.append(rollout._camera(track.c2w, track.intrinsics, 1))
        served.append(rollout.denoise(state, actions, instruction="open the door" if k >= 1 else None))
    assert state.recaches == 1
    turn = {2: rollout.conditioning("a torch-lit stone corridor", "open the door", batch=1)}
    still = rollout.stills(state, torch.cat(cameras, dim=1))  # the whole path's (i2v_warp_pixels: views)
    assert still is not None and (still.shape[2] > 1) == pixels  # one still latent, or a view per frame

    def train_rollout(seed: int, turns: dict | None = turn) -> torch.Tensor:
        with torch.no_grad():
            out = self_forcing_rollout(
                model,
                reference=reference,
                camera=torch.cat(cameras, dim=1),
                conditioning=rollout.conditioning("a torch-lit stone corridor", None, batch=1),
                num_blocks=blocks,
                timesteps=rollout.timesteps,
                generator=torch.Generator().manual_seed(seed),
                height=SIZE,
                width=SIZE,
                exit_steps=[len(rollout.timesteps) - 1] * blocks,  # the serving policy: every step
                turns=turns,
                still=still,
            )
        assert out.recaches == len(turns or {})
        return out.video_latents

    trained = train_rollout(11)
    assert trained.shape[2] == 1 + blocks * cfg.causal.block_frames
    assert torch.equal(trained, torch.cat(served, dim=2))
    other = train_rollout(12)  # a different noise seed is not equal, so the comparison can fail
    unturned = train_rollout(11, turns=None)  # nor is the rollout that never hears the instruction
    assert torch.equal(unturned[:, :, :3], trained[:, :, :3])  # the same until the turn
    assert not torch.equal(unturned[:, :, 3:], trained[:, :, 3:])
    assert not torch.equal(other[:, :, 1:], trained[:, :, 1:])


def test_an_early_exit_returns_that_steps_estimate_with_a_graph_only_there() -> None:
    rollout = _rollout(seed=0)
    model = rollout.model.train()
    state, _ = rollout.start(torch.zeros(1, 3, SIZE, SIZE), prompt="a field")
    f = model.cfg.causal.block_frames
    ref = state.reference
    track = actions_to_camera([parse_action("w")] * 8, width=SIZE, height=SIZE, fov_deg=model.cfg.fov_deg)
    camera = rollout._camera(track.c2w, track.intrinsics, 1)
    cond = i2v_condition(ref, num_frames=f, temporal_stride=4, frame_start=1)
    shape = (1, model.cfg.latent_channels, f, ref.shape[3], ref.shape[4])
    calls: list[bool] = []
    original = model.forward_step

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    model.forward_step = spy  # type: ignore[method-assign]
    noise = BlockNoise(torch.Generator().manual_seed(4))

    def block(timesteps: list[float], **kw: object) -> torch.Tensor:
        return denoise_block(
            model,
            scheduler=FewStepScheduler(timesteps),
            noise=lambda: noise(shape, ref),
            cond=cond,
            camera=camera,
            block_index=1,
            cache=state.cache,
            exit_step=1,
            **kw,  # type: ignore[arg-type]
        )

    x0 = block([1000.0, 900.0, 600.0, 300.0], grad=True)
    assert calls == [False, True]  # steps 0 and 1 ran; only the exit step recorded a graph
    assert x0.requires_grad and x0.shape == shape
    with pytest.raises(ValueError, match="exit step"):
        block([1000.0])


def test_block_noise_rows_of_a_global_batch_split_across_ranks() -> None:
    whole = BlockNoise(torch.Generator().manual_seed(2))((4, 2, 3), torch.zeros(()))
    parts = [
        BlockNoise(torch.Generator().manual_seed(2), 4, r * 2)((2, 2, 3), torch.zeros(())) for r in (0, 1)
    ]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="not in a batch"):
        BlockNoise(None, 4, 3)((2, 2, 3), torch.zeros(()))


def test_schedulers_step_the_straight_path_exactly() -> None:
    x0 = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # velocity of the point mass at x0
        s = (t / 1000).reshape(-1, 1, 1, 1, 1)
        return (x - x0) / s.clamp_min(1e-6)

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for scheduler in (EulerScheduler([1000.0, 700.0, 300.0]), FewStepScheduler([1000.0, 500.0])):
        out = sample(oracle, noise, scheduler, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(out, x0, atol=1e-5), scheduler
