"""Wan2.1 VAE adapter: the released key names and shapes (both layouts) load into ``wan_vae()``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from worldloop.model.vae import CausalVideoVAE, VAEConfig, wan_vae
from worldloop.model.vae.blocks import Upsample
from worldloop.model.weights.wan_vae import (
    WAN_LATENTS_MEAN,
    WAN_LATENTS_STD,
    convert_wan_vae_state,
    load_wan_vae,
    wan_vae_key_map,
)

Shapes = dict[str, tuple[int, ...]]


def _res(prefix: str, cin: int, cout: int, *, original: bool) -> Shapes:
    """Wan ``ResidualBlock`` / diffusers ``WanResidualBlock`` parameters (written from Wan's code)."""
    n1, c1, n2, c2, sc = (
        ("residual.0", "residual.2", "residual.3", "residual.6", "shortcut")
        if original
        else ("norm1", "conv1", "norm2", "conv2", "conv_shortcut")
    )
    out: Shapes = {
        f"{prefix}.{n1}.gamma": (cin, 1, 1, 1),
        f"{prefix}.{c1}.weight": (cout, cin, 3, 3, 3),
        f"{prefix}.{c1}.bias": (cout,),
        f"{prefix}.{n2}.gamma": (cout, 1, 1, 1),
        f"{prefix}.{c2}.weight": (cout, cout, 3, 3, 3),
        f"{prefix}.{c2}.bias": (cout,),
    }
    if cin != cout:
        out |= {f"{prefix}.{sc}.weight": (cout, cin, 1, 1, 1), f"{prefix}.{sc}.bias": (cout,)}
    return out


def _attn(prefix: str, c: int) -> Shapes:
    return {
        f"{prefix}.norm.gamma": (c, 1, 1),
        f"{prefix}.to_qkv.weight": (3 * c, c, 1, 1),
        f"{prefix}.to_qkv.bias": (3 * c,),
        f"{prefix}.proj.weight": (c, c, 1, 1),
        f"{prefix}.proj.bias": (c,),
    }


def _resample(prefix: str, c: int, *, up: bool, temporal: bool) -> Shapes:
    out: Shapes = {f"{prefix}.resample.1.weight": (c // 2 if up else c, c, 3, 3)}
    out[f"{prefix}.resample.1.bias"] = (c // 2 if up else c,)
    if temporal:
        out |= {
            f"{prefix}.time_conv.weight": (2 * c if up else c, c, 3, 1, 1),
            f"{prefix}.time_conv.bias": (2 * c if up else c,),
        }
    return out


def wan_shapes(dim: int, *, original: bool, z: int = 16) -> Shapes:
    """Every parameter of Wan's VAE (``dim_mult`` (1, 2, 4, 4), 2 res blocks), following the
    constructors of ``wan/modules/vae.py`` and diffusers' ``AutoencoderKLWan`` — not our modules."""
    mult, nrb, down_t = (1, 2, 4, 4), 2, (False, True, True)
    out: Shapes = {}
    # Encoder: conv_in, [res × 2, resample] × 4 (no resample last), mid (res, attn, res), head.
    dims = [dim * m for m in (1, *mult)]
    conv_in = "encoder.conv1" if original else "encoder.conv_in"
    out |= {f"{conv_in}.weight": (dims[0], 3, 3, 3, 3), f"{conv_in}.bias": (dims[0],)}
    k = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        for _ in range(nrb):
            out |= _res(
                f"encoder.{'downsamples' if original else 'down_blocks'}.{k}", cin, cout, original=original
            )
            cin, k = cout, k + 1
        if i < len(mult) - 1:
            out |= _resample(
                f"encoder.{'downsamples' if original else 'down_blocks'}.{k}",
                cout,
                up=False,
                temporal=down_t[i],
            )
            k += 1
    c = dims[-1]
    mid = (
        ("middle.0", "middle.1", "middle.2")
        if original
        else ("mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1")
    )
    for part in ("encoder", "decoder"):
        out |= _res(f"{part}.{mid[0]}", c, c, original=original) | _attn(f"{part}.{mid[1]}", c)
        out |= _res(f"{part}.{mid[2]}", c, c, original=original)
    head_norm, head_conv = ("head.0", "head.2") if original else ("norm_out", "conv_out")
    out[f"encoder.{head_norm}.gamma"] = (c, 1, 1, 1)
    out |= {f"encoder.{head_conv}.weight": (2 * z, c, 3, 3, 3), f"encoder.{head_conv}.bias": (2 * z,)}
    quant, post = ("conv1", "conv2") if original else ("quant_conv", "post_quant_conv")
    out |= {f"{quant}.weight": (2 * z, 2 * z, 1, 1, 1), f"{quant}.bias": (2 * z,)}
    out |= {f"{post}.weight": (z, z, 1, 1, 1), f"{post}.bias": (z,)}
    # Decoder: conv_in, mid, [res × 3, upsample] × 4 (no upsample last), head.
    ddims = [dim * m for m in (mult[-1], *mult[::-1])]
    out |= {f"decoder.{'conv1' if original else 'conv_in'}.weight": (ddims[0], z, 3, 3, 3)}
    out[f"decoder.{'conv1' if original else 'conv_in'}.bias"] = (ddims[0],)
    k = 0
    for i, (cin, cout) in enumerate(zip(ddims[:-1], ddims[1:], strict=True)):
        cin = cin // 2 if i > 0 else cin
        for j in range(nrb + 1):
            out |= _res(
                f"decoder.upsamples.{k}" if original else f"decoder.up_blocks.{i}.resnets.{j}",
                cin,
                cout,
                original=original,
            )
            cin, k = cout, k + 1
        if i < len(mult) - 1:
            prefix = f"decoder.upsamples.{k}" if original else f"decoder.up_blocks.{i}.upsamplers.0"
            out |= _resample(prefix, cout, up=True, temporal=down_t[::-1][i])
            k += 1
    out[f"decoder.{head_norm}.gamma"] = (ddims[-1], 1, 1, 1)
    out |= {f"decoder.{head_conv}.weight": (3, ddims[-1], 3, 3, 3), f"decoder.{head_conv}.bias": (3,)}
    return out


def _small_cfg(dim: int = 8) -> VAEConfig:
    return wan_vae().model_copy(update={"base_channels": dim})


def _random_state(shapes: Shapes, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("original", [False, True])
def test_full_size_wan_key_set_and_shapes_map_onto_every_parameter(original: bool) -> None:
    shapes = wan_shapes(96, original=original)
    # Spot checks of real released names/shapes, written out.
    if not original:
        assert shapes["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"] == (384, 192, 1, 1, 1)
        assert shapes["decoder.up_blocks.0.upsamplers.0.time_conv.weight"] == (768, 384, 3, 1, 1)
        assert shapes["encoder.down_blocks.5.time_conv.weight"] == (192, 192, 3, 1, 1)
        assert shapes["decoder.mid_block.attentions.0.norm.gamma"] == (384, 1, 1)
    with torch.device("meta"):
        vae = CausalVideoVAE(wan_vae())
        state = convert_wan_vae_state({k: torch.empty(s) for k, s in shapes.items()}, vae)
    params = dict(vae.named_parameters())
    assert set(state) == set(params)
    assert all(state[k].shape == params[k].shape for k in params)
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in params.values()) == 126_892_531


@pytest.mark.parametrize("original", [False, True])
def test_values_land_where_they_should(tmp_path: Path, original: bool) -> None:
    shapes = wan_shapes(8, original=original)
    tensors = _random_state(shapes)
    save_file({f"vae.{k}" if original else k: v for k, v in tensors.items()}, tmp_path / "w.safetensors")
    vae = load_wan_vae(tmp_path / "w.safetensors", cfg=_small_cfg())
    mapping = wan_vae_key_map(vae, "original" if original else "diffusers")
    params = dict(vae.named_parameters())
    for theirs, ours in mapping.items():
        assert torch.equal(params[ours].flatten(), tensors[theirs].flatten()), (theirs, ours)
    if not original:  # a few by hand
        up = vae.decoder.blocks[3 + 3]  # stage 0: 3 res blocks, then its upsampler
        assert isinstance(up, Upsample) and up.time_conv is not None
        assert torch.equal(up.time_conv.weight, tensors["decoder.up_blocks.0.upsamplers.0.time_conv.weight"])
        assert torch.equal(vae.encoder.quant.weight, tensors["quant_conv.weight"])
        assert torch.equal(vae.decoder.norm_out.gamma, tensors["decoder.norm_out.gamma"].flatten())
    torch.testing.assert_close(vae.latents_mean, torch.tensor(WAN_LATENTS_MEAN))
    torch.testing.assert_close(vae.latents_std, torch.tensor(WAN_LATENTS_STD))


def test_diffusers_folder_with_config_and_bf16(tmp_path: Path) -> None:
    tensors = {k: v.bfloat16() for k, v in _random_state(wan_shapes(8, original=False)).items()}
    (tmp_path / "vae").mkdir()
    save_file(tensors, tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    stats = {"latents_mean": [0.5] * 16, "latents_std": [2.0] * 16}
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"} | stats))
    vae = load_wan_vae(tmp_path, cfg=_small_cfg())
    assert vae.encoder.conv_in.weight.dtype == torch.float32
    assert torch.equal(vae.encoder.conv_in.weight, tensors["encoder.conv_in.weight"].float())
    assert torch.equal(vae.latents_std, torch.full((16,), 2.0))
    with torch.no_grad():
        assert vae.decode(vae.encode(torch.zeros(1, 3, 5, 16, 16))).shape == (1, 3, 5, 16, 16)


def test_unknown_missing_and_misshapen_keys_are_named(tmp_path: Path) -> None:
    tensors = _random_state(wan_shapes(8, original=False))
    vae = CausalVideoVAE(_small_cfg())
    extra = dict(tensors, **{"encoder.down_blocks.0.norm1.bias": torch.zeros(8)})
    with pytest.raises(ValueError, match=r"unknown keys \[encoder\.down_blocks\.0\.norm1\.bias\]"):
        convert_wan_vae_state(extra, vae)
    short = {k: v for k, v in tensors.items() if k != "decoder.conv_out.bias"}
    with pytest.raises(ValueError, match=r"missing keys \[decoder\.conv_out\.bias\]"):
        convert_wan_vae_state(short, vae)
    wrong = dict(tensors, **{"quant_conv.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"'quant_conv.bias' has shape \(7,\)"):
        convert_wan_vae_state(wrong, vae)
    with pytest.raises(ValueError, match="not a Wan2.1 VAE"):
        convert_wan_vae_state({"foo.weight": torch.zeros(1)}, vae)
    torch.save(tensors, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(ValueError, match="pickled"):
        load_wan_vae(tmp_path / "Wan2.1_VAE.pth", cfg=_small_cfg())


def test_loaded_weights_compute_what_diffusers_computes(tmp_path: Path) -> None:
    """Same outputs as diffusers' AutoencoderKLWan (skipped where diffusers is not installed)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():  # non-trivial values everywhere (Wan zero-inits proj)
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.1) + name.endswith("gamma"))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "w.safetensors")
    vae = load_wan_vae(tmp_path / "w.safetensors", cfg=_small_cfg())
    video, z = torch.rand(1, 3, 9, 32, 32) * 2 - 1, torch.randn(1, 16, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(vae.encode_dist(video)[0], ref._encode(video)[:, :16], atol=1e-4, rtol=0)
        raw = vae.decode(vae.normalize_latents(z)).clamp(-1, 1)
        torch.testing.assert_close(raw, ref.decode(z).sample, atol=1e-4, rtol=0)
