"""The velocity anchored on the I2V latent (``ModelConfig.i2v_anchor``, ``model/arch/anchor.py``)."""

from __future__ import annotations

import pytest
import torch

from worldloop.model import Conditioning, WorldModel, actions_to_camera, plucker_embedding, tiny
from worldloop.model.arch.anchor import prior_velocity
from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.world_model import i2v_condition
from worldloop.model.camera import parse_action
from worldloop.model.config import ModelConfig

SIZE = 64


@pytest.mark.parametrize(("sigma", "std"), [(0.95, 0.5), (0.6, 1.0), (0.3, 0.5), (0.05, 2.0)])
def test_prior_velocity_is_the_least_squares_velocity_under_the_gaussian_prior(
    sigma: float, std: float
) -> None:
    """Drawn x0 ~ N(g, s²) and ε ~ N(0, 1): the best predictor of ε − x0 from x_t (linear, since all is
    Gaussian) fitted by least squares on the draws is the closed form, slope and intercept."""
    g = torch.Generator().manual_seed(int(sigma * 100 + std * 10))
    n, guess = 400_000, 0.7
    x0 = guess + std * torch.randn(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    x_t = (1 - sigma) * x0 + sigma * eps
    design = torch.stack([x_t, torch.ones_like(x_t)], dim=1)
    slope, intercept = torch.linalg.lstsq(design, (eps - x0)[:, None]).solution[:, 0].tolist()

    def prior(x: float) -> float:
        t = torch.full((1, 1), sigma * 1000)
        return float(
            prior_velocity(torch.full((1, 1, 1, 1, 1), x), torch.full((1, 1, 1, 1, 1), guess), t, std=std)
        )

    assert prior(1.0) - prior(0.0) == pytest.approx(slope, abs=0.02 * max(1.0, abs(slope)))
    assert prior(0.0) == pytest.approx(intercept, abs=0.02 * max(1.0, abs(intercept)))


def test_prior_velocity_limits() -> None:
    """σ = 1 predicts x0 = the guess; σ → 0 predicts x0 = x_t; finite at σ = 0."""
    torch.manual_seed(0)
    x, guess = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)

    def x0(sigma: float) -> torch.Tensor:
        return x - sigma * prior_velocity(x, guess, torch.full((2, 4), sigma * 1000), std=0.8)

    torch.testing.assert_close(x0(1.0), guess)
    torch.testing.assert_close(x0(1e-4), x, atol=1e-3, rtol=0)
    assert torch.isfinite(prior_velocity(x, guess, torch.zeros(2, 4), std=0.8)).all()


def _camera(action: str, frames: int = 9) -> torch.Tensor:
    acts = [parse_action("none")] + [parse_action(action, mouse_dx=3.0)] * (frames - 1)
    track = actions_to_camera(acts, width=SIZE, height=SIZE, fov_deg=90.0)
    return group_plucker(plucker_embedding(track.intrinsics, track.c2w, SIZE, SIZE)[None], temporal_stride=4)


def test_an_untrained_anchored_model_predicts_the_warped_still_latent() -> None:
    """The experts' head starts at zero, so at σ = 1 the model's clean latents are the I2V channels it
    reads — the reference seen through the plane from each frame's camera — and without the anchor the
    same model predicts x0 = x_t (velocity 0)."""
    torch.manual_seed(0)
    cfg = tiny().model_copy(update={"i2v_anchor": 0.5, "i2v_warp_pixels": False})  # the model warps
    model = WorldModel(cfg).eval()
    h = SIZE // cfg.vae.spatial_stride
    reference, still = (
        torch.randn(1, cfg.latent_channels, 1, h, h),
        torch.randn(1, cfg.latent_channels, 1, h, h),
    )
    camera = _camera("w+a")
    cond = i2v_condition(reference, num_frames=3, temporal_stride=4, still=still)
    x_t = torch.randn(1, cfg.latent_channels, 3, h, h)
    timesteps = torch.tensor([[0.0, 1000.0, 1000.0]])
    text = Conditioning(torch.randn(1, 4, cfg.text_dim), torch.ones(1, 4, dtype=torch.bool))
    with torch.no_grad():
        v = model(x_t, timesteps=timesteps, cond=cond, camera=camera, conditioning=text, causal=False)
        seen = model.condition(cond, camera)[:, 4:]
        plain = WorldModel(cfg.model_copy(update={"i2v_anchor": None})).eval()
        plain.load_state_dict(model.state_dict())
        v_plain = plain(x_t, timesteps=timesteps, cond=cond, camera=camera, conditioning=text, causal=False)
    torch.testing.assert_close((x_t - v)[:, :, 1:], seen[:, :, 1:])
    assert (seen[:, :, 1:] - still).abs().mean() > 0.1  # the camera moved the still latent
    assert v_plain.abs().max() == 0


def test_the_anchor_needs_the_still_latent() -> None:
    with pytest.raises(ValueError, match="needs i2v_still"):
        ModelConfig(
            **(
                tiny().model_dump()
                | {"i2v_still": False, "i2v_warp": None, "i2v_warp_pixels": False, "i2v_anchor": 1.0}
            )
        )
