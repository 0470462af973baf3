"""Causal video VAE: strides, causality, streaming decode, latent scaling, errors, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from worldloop.components.synthworld.clip import generate_clip
from worldloop.components.synthworld.config import SynthConfig
from worldloop.model.vae import CausalConv3d, CausalVideoVAE, VAEConfig, tiny_vae, vae_loss, wan_vae


@pytest.fixture(scope="module")
def vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    model = CausalVideoVAE(tiny_vae()).eval()
    # Random (not zero-initialised) attention outputs so every path carries signal in the tests.
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    return model


def _video(frames: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def test_strides_temporal_4_first_frame_alone_spatial_8(vae: CausalVideoVAE) -> None:
    cfg = vae.cfg
    assert (cfg.temporal_stride, cfg.spatial_stride) == (4, 8)
    assert (wan_vae().temporal_stride, wan_vae().spatial_stride, wan_vae().latent_channels) == (4, 8, 16)
    with torch.no_grad():
        for frames, latent_frames in [(1, 1), (5, 2), (9, 3), (17, 5)]:
            z = vae.encode(_video(frames))
            assert z.shape == (1, 16, latent_frames, 4, 4)
            assert vae.decode(z).shape == (1, 3, frames, 32, 32)


def test_encoding_is_causal_in_time(vae: CausalVideoVAE) -> None:
    """Latent frame t depends only on video frames ≤ 1 + 4t: changing later frames leaves it alone."""
    video = _video(9)
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]  # frames 5..8 → only latent frame 2 may move
    with torch.no_grad():
        a, b = vae.encode(video), vae.encode(changed)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2], atol=1e-6, rtol=0)
    assert (a[:, :, 2] - b[:, :, 2]).abs().max() > 1e-3


def test_decode_of_frame_t_does_not_change_when_later_latents_change(vae: CausalVideoVAE) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, 4, 4, 4, generator=g)
    later = z.clone()
    later[:, :, 2:] = torch.randn(1, 16, 2, 4, 4, generator=g)
    with torch.no_grad():
        a, b = vae.decode(z), vae.decode(later)
    # latent frames 0, 1 decode to video frames 0..4
    torch.testing.assert_close(a[:, :, :5], b[:, :, :5], atol=1e-6, rtol=0)
    assert (a[:, :, 5:] - b[:, :, 5:]).abs().max() > 1e-3


@pytest.mark.parametrize("split", [[1, 1, 1, 1, 1], [1, 2, 2], [3, 2], [2, 1, 1, 1]])
def test_streaming_decode_equals_full_decode_for_any_split(vae: CausalVideoVAE, split: list[int]) -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 16, sum(split), 4, 4, generator=g)
    with torch.no_grad():
        full = vae.decode(z)
        cache = vae.new_decode_cache()
        parts, start = [], 0
        for n in split:
            parts.append(vae.decode_step(z[:, :, start : start + n], cache))
            start += n
    expected = [1 + 4 * (split[0] - 1)] + [4 * n for n in split[1:]]
    assert [p.shape[2] for p in parts] == expected
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-5, rtol=0)


def test_decode_cache_memory_is_fixed_for_any_stream_length(vae: CausalVideoVAE) -> None:
    cache = vae.new_decode_cache()
    sizes = []
    with torch.no_grad():
        for _ in range(12):
            vae.decode_step(torch.randn(1, 16, 1, 4, 4), cache)
            sizes.append(cache.num_bytes)
    assert len(set(sizes[1:])) == 1  # constant after the first step
    causal_convs = [m for m in vae.decoder.modules() if isinstance(m, CausalConv3d)]
    assert sorted(cache.time_lengths()) == sorted(m.past_frames for m in causal_convs if m.past_frames)


def test_decode_cache_rejects_a_different_stream_shape(vae: CausalVideoVAE) -> None:
    cache = vae.new_decode_cache()
    with torch.no_grad():
        vae.decode_step(torch.randn(1, 16, 1, 4, 4), cache)
        with pytest.raises(ValueError, match="new_decode_cache"):
            vae.decode_step(torch.randn(1, 16, 1, 6, 6), cache)


def test_latent_stats_normalise_and_invert(vae: CausalVideoVAE) -> None:
    model = CausalVideoVAE(tiny_vae()).eval()
    model.load_state_dict(vae.state_dict())
    video = _video(5)
    with torch.no_grad():
        raw = vae.encode(video)  # identity stats
        mean, std = torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16)
        model.set_latent_stats(mean, std)
        scaled = model.encode(video)
        torch.testing.assert_close(scaled, (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1))
        torch.testing.assert_close(model.decode(scaled), vae.decode(raw), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="positive"):
        model.set_latent_stats(mean, -std)
    with pytest.raises(ValueError, match="shape"):
        model.set_latent_stats(mean[:3], std)


def test_bad_shapes_name_the_fix(vae: CausalVideoVAE) -> None:
    with pytest.raises(ValueError, match=r"1 \+ 4·k"):
        vae.encode(_video(8))
    with pytest.raises(ValueError, match="multiples of the VAE spatial stride 8"):
        vae.encode(torch.zeros(1, 3, 5, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        vae.encode(torch.zeros(3, 5, 32, 32))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 8, 2, 4, 4))
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAEConfig(base_channels=8, channel_multipliers=(1, 2), num_res_blocks=1, temporal_downsample=())
    with pytest.raises(ValueError, match="kl_weight"):
        vae_loss(vae, _video(5), kl_weight=-1.0)


def test_sampled_encoding_is_reproducible_and_differs_from_the_mean(vae: CausalVideoVAE) -> None:
    video = _video(5)
    with torch.no_grad():
        a = vae.encode(video, sample=True, generator=torch.Generator().manual_seed(3))
        b = vae.encode(video, sample=True, generator=torch.Generator().manual_seed(3))
        mean = vae.encode(video)
    assert torch.equal(a, b)
    assert not torch.allclose(a, mean)


def test_tiny_vae_learns_synthworld_reconstruction() -> None:
    """A few dozen Adam steps on one SynthWorld clip cut the reconstruction error substantially."""
    clip = generate_clip(SynthConfig(size=32, frames=9, map_cells=16), seed=4)
    video = torch.from_numpy(np.ascontiguousarray(clip.frames)).float().div(127.5).sub(1.0)
    video = video.permute(3, 0, 1, 2)[None]  # (1, 3, 9, 32, 32)
    torch.manual_seed(0)
    model = CausalVideoVAE(tiny_vae())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss, parts = vae_loss(model, video, kl_weight=1e-6, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["recon"])
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
