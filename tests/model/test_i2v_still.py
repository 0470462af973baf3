"""The still-latent I2V condition (``ModelConfig.i2v_still``): frames ≥ 1 carry the latent of the
reference image held still, built the same way in training, in the stage 3–4 scores and in serving."""

from __future__ import annotations

import pytest
import torch

from worldloop.model import WorldModel, i2v_condition, load_preset
from worldloop.model.arch.world_model import Conditioning
from worldloop.model.config import small
from worldloop.model.distill.self_forcing import self_forcing_rollout
from worldloop.model.rollout import Rollout
from worldloop.model.spec import build_modules, preset_spec
from worldloop.model.text import HashingEncoder
from worldloop.model.train.objectives.batch import prepare_batch
from worldloop.model.train.windows import Window
from worldloop.model.vae.autoencoder import CausalVideoVAE

SIZE = 32


def _vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    return CausalVideoVAE(load_preset("tiny").vae).eval()


def test_still_latent_is_the_decoded_image_held_still_and_encoded() -> None:
    vae = _vae()
    image = torch.rand(2, 3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference = vae.encode(image)
    still = vae.still_latent(reference)
    assert still.shape == reference.shape
    shown = vae.decode(reference).clamp(-1, 1)
    held = vae.encode(shown.expand(-1, -1, 1 + vae.cfg.temporal_stride, -1, -1))
    assert torch.equal(still, held[:, :, 1:2])
    # a group latent is not the first-frame latent: the condition is not the reference copied
    assert not torch.allclose(still, reference, atol=1e-3)
    # each row is its own image's
    assert torch.equal(vae.still_latent(reference[1:]), still[1:])


def test_i2v_condition_carries_the_still_latent_after_frame_zero_with_a_zero_mask() -> None:
    g = torch.Generator().manual_seed(2)
    reference, still = torch.randn(1, 16, 1, 4, 4, generator=g), torch.randn(1, 16, 1, 4, 4, generator=g)
    cond = i2v_condition(reference, num_frames=5, temporal_stride=4, still=still)
    mask, y = cond[:, :4], cond[:, 4:]
    assert torch.equal(mask[:, :, 0], torch.ones_like(mask[:, :, 0])) and not mask[:, :, 1:].any()
    assert torch.equal(y[:, :, :1], reference)
    assert all(torch.equal(y[:, :, k : k + 1], still) for k in range(1, 5))
    later = i2v_condition(reference, num_frames=2, temporal_stride=4, frame_start=3, still=still)
    assert not later[:, :4].any() and torch.equal(later[:, 4:], still.expand(-1, -1, 2, -1, -1))
    plain = i2v_condition(reference, num_frames=5, temporal_stride=4)  # Wan's layout: zeros
    assert not plain[:, 4:, 1:].any()
    with pytest.raises(ValueError, match="must match the reference"):
        i2v_condition(reference, num_frames=5, temporal_stride=4, still=still[:, :8])


def test_training_batches_and_serving_derive_the_same_still_latent() -> None:
    """Training (prepare_batch) and serving (Rollout.start) both take it from frame 0's latent."""
    g = torch.Generator().manual_seed(3)
    video = torch.rand(3, 9, SIZE, SIZE, generator=g) * 2 - 1
    intrinsics = torch.tensor([[SIZE, 0.0, SIZE / 2], [0.0, SIZE, SIZE / 2], [0.0, 0.0, 1.0]]).expand(9, 3, 3)
    window = Window(video, intrinsics.clone(), torch.eye(4).expand(9, 4, 4).clone(), "a room", ())
    vae, text = _vae(), HashingEncoder(dim=384)
    latent_warp = load_preset("tiny").model_copy(update={"i2v_warp_pixels": False})
    batch = prepare_batch([window], vae=vae, text_encoder=text, with_instruction=False, i2v=latent_warp)
    assert batch.still is not None and torch.equal(batch.still, vae.still_latent(batch.latents[:, :, :1]))
    stride = vae.cfg.temporal_stride
    assert torch.equal(
        batch.cond[:, stride:, 1:], batch.still.expand(-1, -1, batch.latents.shape[2] - 1, -1, -1)
    )
    plain = prepare_batch([window], vae=vae, text_encoder=text, with_instruction=False)
    assert plain.still is None and not plain.cond[:, stride:, 1:].any()

    cfg = load_preset("tiny")
    assert cfg.i2v_still  # tiny conditions on it; Wan-layout presets do not (their weights load as is)
    assert not small().i2v_still
    torch.manual_seed(0)
    rollout = Rollout(WorldModel(latent_warp).eval(), vae=vae, text_encoder=text, height=SIZE, width=SIZE)
    state, _ = rollout.start(video[None, :, 0], prompt="a room")
    assert state.still is not None and torch.equal(state.still, vae.still_latent(state.reference))
    # tiny warps the image itself (i2v_warp_pixels): the stream keeps the image, each block its views
    model, _ = build_modules(preset_spec("tiny", height=SIZE, width=SIZE), seed=0)
    rollout = Rollout(model.eval(), vae=vae, text_encoder=text, height=SIZE, width=SIZE)
    state, _ = rollout.start(video[None, :, 0], prompt="a room")
    assert state.still is None and state.image is not None and torch.equal(state.image, video[None, :, 0])


def test_a_still_conditioned_student_refuses_a_rollout_without_it() -> None:
    model, _ = build_modules(preset_spec("tiny", height=SIZE, width=SIZE), seed=0)
    g = torch.Generator().manual_seed(4)
    kwargs = {
        "reference": torch.randn(1, 16, 1, 4, 4, generator=g),
        "camera": torch.zeros(1, 5, 24, SIZE, SIZE),
        "conditioning": Conditioning(torch.randn(1, 3, 384, generator=g), torch.ones(1, 3, dtype=torch.bool)),
        "num_blocks": 2,
        "timesteps": [1000.0, 500.0],
        "generator": torch.Generator().manual_seed(5),
        "height": SIZE,
        "width": SIZE,
    }
    with torch.no_grad(), pytest.raises(ValueError, match="pass still"):
        self_forcing_rollout(model, **kwargs)
