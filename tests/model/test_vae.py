"""Causal video VAE: strides, patchify, causality, streaming decode, latent scaling and statistics,
the loss and recipe config, errors, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldloop.components.synthworld.clip import generate_clip
from worldloop.components.synthworld.config import SynthConfig
from worldloop.model.vae import (
    CausalConv3d,
    CausalVideoVAE,
    VAEConfig,
    VAETrainConfig,
    fit_latent_stats,
    latent_stats,
    ssim,
    tiny_vae,
    tiny_vae_recipe,
    vae_loss,
    wan_vae,
)
from worldloop.model.vae.blocks import patchify, unpatchify
from worldloop.model.vae.shortcut import block_means, block_repeat

# The Wan2.1 layout at tiny width (no patchify, full-resolution first stage): kept under test next to
# the patchified tiny_vae() so both code paths stay exact.
WAN21_TINY = VAEConfig(
    base_channels=8,
    channel_multipliers=(1, 2, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(False, True, True),
)
Z = tiny_vae().latent_channels
# The tiny VAE with the colour-means shortcut instead of its linear block code (per-channel latent scale).
MEANS_SHORTCUT = VAEConfig.model_validate(
    tiny_vae().model_dump() | {"linear_code": False, "latent_shortcut": True, "latent_channels": 16}
)


@pytest.fixture(scope="module")
def vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    model = CausalVideoVAE(tiny_vae()).eval()
    # Random (not zero-initialised) attention outputs so every path carries signal in the tests.
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    if model.decoder.code is not None:  # zeroed at construction (the code alone): give the network a say
        torch.nn.init.normal_(model.decoder.conv_out.weight, std=0.05)
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
            assert z.shape == (1, Z, latent_frames, 4, 4)
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
    z = torch.randn(1, Z, 4, 4, 4, generator=g)
    later = z.clone()
    later[:, :, 2:] = torch.randn(1, Z, 2, 4, 4, generator=g)
    with torch.no_grad():
        a, b = vae.decode(z), vae.decode(later)
    # latent frames 0, 1 decode to video frames 0..4
    torch.testing.assert_close(a[:, :, :5], b[:, :, :5], atol=1e-6, rtol=0)
    assert (a[:, :, 5:] - b[:, :, 5:]).abs().max() > 1e-3


def test_patchify_folds_pixels_into_channels_and_back() -> None:
    x = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 3, 2, 4, 6)
    p = patchify(x, 2)
    assert p.shape == (2, 12, 2, 2, 3)
    # channel c·4 + j·2 + i holds pixel (2h + i, 2w + j): Wan2.2's "(c r q)" order
    assert p[0, 1 * 4 + 1 * 2 + 0, 1, 1, 2] == x[0, 1, 1, 2, 5]
    assert torch.equal(unpatchify(p, 2), x)
    assert patchify(x, 1) is x


def test_shortcut_means_cover_the_frames_of_their_latent_frame_and_repeat_back() -> None:
    video = _video(9)  # (1, 3, 9, 32, 32)
    means = block_means(video, temporal=4, spatial=8, cells=2)
    assert means.shape == (1, 12, 3, 4, 4)
    back = block_repeat(means, temporal=4, spatial=8, cells=2, first=True)
    assert back.shape == video.shape
    # pixel (5, 2) of frame 6 is in cell (1, 0) of latent pixel (0, 0), latent frame 2 (frames 5..8)
    torch.testing.assert_close(back[0, 2, 6, 5, 2], video[0, 2, 5:9, 4:8, 0:4].mean())
    torch.testing.assert_close(back[0, 0, 0, 0, 0], video[0, 0, 0, 0:4, 0:4].mean())  # frame 0 alone
    assert block_repeat(means[:, :, 1:], temporal=4, spatial=8, cells=2, first=False).shape[2] == 8
    assert MEANS_SHORTCUT.shortcut_cells == 2 and tiny_vae().shortcut_cells == 0


def test_patch_size_is_part_of_the_spatial_stride() -> None:
    cfg = tiny_vae()
    assert cfg.spatial_stride == cfg.patch_size * 2 ** (len(cfg.channel_multipliers) - 1) == 8
    assert (cfg.latent_channels, cfg.temporal_stride, cfg.patch_channels) == (16, 4, 3 * cfg.patch_size**2)
    with torch.no_grad():
        vae = CausalVideoVAE(cfg).eval()
        z = vae.encode(_video(17, size=64))
        assert z.shape == (1, 16, 5, 8, 8)
        assert vae.decode(z).shape == (1, 3, 17, 64, 64)


@pytest.mark.parametrize("split", [[1, 1, 1, 1, 1], [1, 2, 2], [3, 2], [2, 1, 1, 1]])
def test_streaming_decode_equals_full_decode_for_any_split(vae: CausalVideoVAE, split: list[int]) -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, Z, sum(split), 4, 4, generator=g)
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


@pytest.mark.parametrize(
    "cfg",
    [
        tiny_vae(),
        WAN21_TINY,
        MEANS_SHORTCUT,
    ],
    ids=["tiny", "wan21", "tiny_means_shortcut"],
)
def test_streaming_decode_equals_full_decode_for_both_layouts(cfg: VAEConfig) -> None:
    torch.manual_seed(5)
    model = CausalVideoVAE(cfg).eval()
    for m in model.modules():  # non-zero attention outputs
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    if model.decoder.code is not None:
        torch.nn.init.normal_(model.decoder.conv_out.weight, std=0.05)
    z = torch.randn(1, cfg.latent_channels, 4, 4, 4)
    with torch.no_grad():
        full = model.decode(z)
        cache = model.new_decode_cache()
        parts = [model.decode_step(z[:, :, :1], cache), model.decode_step(z[:, :, 1:3], cache)]
        parts.append(model.decode_step(z[:, :, 3:], cache))
    assert full.shape == (1, 3, 13, 32, 32)
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-5, rtol=0)


def test_decode_cache_memory_is_fixed_for_any_stream_length(vae: CausalVideoVAE) -> None:
    cache = vae.new_decode_cache()
    sizes = []
    with torch.no_grad():
        for _ in range(12):
            vae.decode_step(torch.randn(1, Z, 1, 4, 4), cache)
            sizes.append(cache.num_bytes)
    assert len(set(sizes[1:])) == 1  # constant after the first step
    causal_convs = [m for m in vae.decoder.modules() if isinstance(m, CausalConv3d)]
    assert sorted(cache.time_lengths()) == sorted(m.past_frames for m in causal_convs if m.past_frames)


def test_decode_cache_rejects_a_different_stream_shape(vae: CausalVideoVAE) -> None:
    cache = vae.new_decode_cache()
    with torch.no_grad():
        vae.decode_step(torch.randn(1, Z, 1, 4, 4), cache)
        with pytest.raises(ValueError, match="new_decode_cache"):
            vae.decode_step(torch.randn(1, Z, 1, 6, 6), cache)


def test_latent_stats_normalise_and_invert(vae: CausalVideoVAE) -> None:
    model = CausalVideoVAE(tiny_vae()).eval()
    model.load_state_dict(vae.state_dict())
    video = _video(5)
    with torch.no_grad():
        raw = vae.encode(video)  # identity stats
        mean, std = torch.linspace(-1, 1, Z), torch.linspace(0.5, 2, Z)
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
    with pytest.raises(ValueError, match=r"1 \+ 4·k"):
        VAETrainConfig.model_validate(tiny_vae_recipe().model_dump() | {"num_frames": 8})
    with pytest.raises(ValueError, match="image_steps"):
        VAETrainConfig.model_validate(tiny_vae_recipe().model_dump() | {"image_steps": 10**6})
    with pytest.raises(ValueError, match="extra"):
        VAETrainConfig.model_validate(tiny_vae_recipe().model_dump() | {"learning_rate": 1.0})


def test_sampled_encoding_is_reproducible_and_differs_from_the_mean(vae: CausalVideoVAE) -> None:
    video = _video(5)
    with torch.no_grad():
        a = vae.encode(video, sample=True, generator=torch.Generator().manual_seed(3))
        b = vae.encode(video, sample=True, generator=torch.Generator().manual_seed(3))
        mean = vae.encode(video)
    assert torch.equal(a, b)
    assert not torch.allclose(a, mean)


def _synth_video(frames: int = 9, size: int = 32, seed: int = 4) -> torch.Tensor:
    clip = generate_clip(SynthConfig(size=size, frames=frames, map_cells=16), seed=seed)
    video = torch.from_numpy(np.ascontiguousarray(clip.frames)).float().div(127.5).sub(1.0)
    return video.permute(3, 0, 1, 2)[None]  # (1, 3, F, H, W)


def test_tiny_vae_learns_synthworld_reconstruction() -> None:
    """A few dozen steps of the recipe's loss on one SynthWorld clip cut the error substantially."""
    video = _synth_video()
    recipe = tiny_vae_recipe()
    torch.manual_seed(0)
    model = CausalVideoVAE(tiny_vae())
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas)
    g = torch.Generator().manual_seed(0)
    pixel, losses = [], []
    for _ in range(30):
        loss, parts = vae_loss(
            model, video, kl_weight=recipe.kl_weight, ssim_weight=recipe.ssim_weight, generator=g
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        pixel.append(parts["pixel"])
        losses.append(parts["loss"])
    assert all(np.isfinite(losses)) and {"pixel", "kl", "psnr"} <= set(parts)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    assert np.mean(pixel[-5:]) < 0.6 * np.mean(pixel[:5]), pixel


def test_ssim_is_one_for_identical_frames_and_drops_with_noise() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (ssim(noisy, x) < 0.9).all()


def test_recipe_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = VAETrainConfig(lr=1e-3, warmup_steps=10, num_steps=110, batch_size=1, num_frames=5, image_steps=20)
    lrs = [cfg.lr_at(i) for i in range(cfg.num_steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(cfg.min_lr_ratio * 1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert (cfg.frames_at(19), cfg.frames_at(20)) == (1, 5)
    assert (cfg.batch_at(0), cfg.batch_at(20)) == (cfg.image_batch_size, 1)


def test_latent_stats_make_encoded_latents_unit_scale() -> None:
    torch.manual_seed(0)
    model = CausalVideoVAE(MEANS_SHORTCUT).eval()  # per-channel scales (a linear code has one)
    videos = [_synth_video(seed=s) for s in (1, 2)]
    with torch.no_grad():
        raw = torch.cat([model.encode_dist(v)[0] for v in videos])  # (2, 16, T, h, w)
    expect_mean = raw.transpose(0, 1).reshape(16, -1).mean(1)
    expect_std = raw.transpose(0, 1).reshape(16, -1).std(1)
    mean, std = latent_stats(model, videos)
    torch.testing.assert_close(mean, expect_mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std, expect_std, atol=1e-5, rtol=1e-4)
    fit_latent_stats(model, videos)
    with torch.no_grad():
        scaled = torch.cat([model.encode(v) for v in videos]).transpose(0, 1).reshape(16, -1)
    torch.testing.assert_close(scaled.mean(1), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(scaled.std(1), torch.ones(16), atol=1e-4, rtol=0)
