"""The VAE's linear block code: a fresh VAE fitted on clips reconstructs exactly as their PCA does,
and streams like it decodes whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldloop.model.vae import CausalVideoVAE, VAEConfig, tiny_vae
from worldloop.model.vae.linear_code import block_rows, fit_linear_code, rows_to_video


def _code_vae(channels: int = 16) -> CausalVideoVAE:
    torch.manual_seed(0)
    cfg = tiny_vae().model_copy(
        update={"latent_shortcut": False, "linear_code": True, "latent_channels": channels}
    )
    return CausalVideoVAE(VAEConfig.model_validate(cfg.model_dump())).eval()


def _clips(n: int = 6, frames: int = 9, size: int = 32) -> torch.Tensor:
    """Smooth random clips with a moving texture: structure PCA can find."""
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(n, 3, 1, 8, 8, generator=g), size=(frames, size, size))
    drift = torch.linspace(0, 1, frames).view(1, 1, frames, 1, 1) * torch.rand(n, 3, 1, 1, 1, generator=g)
    return (base + 0.3 * drift) * 2 - 1 + 0.02 * torch.randn(n, 3, frames, size, size, generator=g)


def _pca_reconstruction(video: torch.Tensor, k: int) -> torch.Tensor:
    """numpy PCA (fitted on ``video`` itself) of each latent frame kind's blocks, top ``k`` directions."""
    first, rest = block_rows(video.double(), temporal=4, spatial=8)
    out = []
    for rows, frames in ((first, 1), (rest, 4)):
        x = rows.reshape(-1, rows.shape[-1]).numpy()
        mean = x.mean(axis=0)
        vt = np.linalg.svd(x - mean, full_matrices=False)[2][:k]
        rec = torch.from_numpy((x - mean) @ vt.T @ vt + mean).reshape(rows.shape)
        out.append(rows_to_video(rec, frames=frames, channels=3, spatial=8))
    return torch.cat(out, dim=2)


def test_block_rows_round_trip() -> None:
    video = torch.randn(2, 3, 9, 16, 24)
    first, rest = block_rows(video, temporal=4, spatial=8)
    assert first.shape == (2, 1, 2, 3, 192) and rest.shape == (2, 2, 2, 3, 768)
    back = torch.cat(
        [
            rows_to_video(first, frames=1, channels=3, spatial=8),
            rows_to_video(rest, frames=4, channels=3, spatial=8),
        ],
        dim=2,
    )
    assert torch.equal(back, video)


def test_a_fitted_fresh_vae_is_the_pca_of_its_data() -> None:
    vae, clips = _code_vae(), _clips()
    rms = fit_linear_code(vae.encoder.code, vae.decoder.code, [clips])  # type: ignore[arg-type]
    assert rms > 0
    with torch.no_grad():
        rec = vae.decode(vae.encode(clips))
    expected = _pca_reconstruction(clips, 16)
    torch.testing.assert_close(rec.double(), expected, atol=2e-4, rtol=0)
    # and far better than what the same VAE gave before the fit
    fresh = _code_vae()
    with torch.no_grad():
        before = (fresh.decode(fresh.encode(clips)) - clips).square().mean()
    assert (rec - clips).square().mean() < 0.2 * before


def test_streaming_decode_equals_whole_decode_with_the_code() -> None:
    vae = _code_vae()
    for m in vae.modules():  # give the networks (zeroed last layers) a say
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.normal_(m.weight, std=0.05)
    latents = torch.randn(1, 16, 5, 4, 4)
    with torch.no_grad():
        whole = vae.decode(latents)
        cache = vae.new_decode_cache()
        parts = [vae.decode_step(latents[:, :, a:b], cache) for a, b in ((0, 1), (1, 3), (3, 5))]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=1e-5)


def test_config_refuses_two_shortcuts_and_too_many_channels() -> None:
    with pytest.raises(ValueError, match="choose one"):
        tiny_vae().model_copy(update={"linear_code": True}).model_validate(
            tiny_vae().model_dump() | {"linear_code": True, "latent_shortcut": True}
        )
    with pytest.raises(ValueError, match="at most"):
        VAEConfig.model_validate(
            tiny_vae().model_dump() | {"linear_code": True, "latent_shortcut": False, "latent_channels": 256}
        )
