"""Released Wan2.1 VAE weights (the VAE Wan2.2 I2V-A14B uses) → :class:`CausalVideoVAE` (``wan_vae()``).

Two layouts of the same 127M parameters exist, both readable here (safetensors only, never pickle):

* **diffusers** ``AutoencoderKLWan`` — ``vae/diffusion_pytorch_model.safetensors`` of a diffusers
  pipeline folder (``encoder.down_blocks.N``, ``encoder.mid_block.resnets.N``,
  ``decoder.up_blocks.S.resnets.J``, ``decoder.up_blocks.S.upsamplers.0``, ``quant_conv``, …);
* **original** ``wan/modules/vae.py`` (``Encoder3d``/``Decoder3d`` with ``nn.Sequential`` indices:
  ``encoder.downsamples.N.residual.{0,2,3,6}``, ``encoder.middle.N``, ``encoder.head.{0,2}``,
  ``decoder.upsamples.N``, ``conv1``/``conv2`` quant convs), as repackaged in safetensors.

Our blocks compute exactly what Wan's do (RMS norms with a gain and no bias, the first latent frame
skipping the temporal upsample conv); only names differ, and Wan's norm gains carry trailing
singleton dims ``(C, 1, 1, 1)`` where ours are ``(C,)``. The map is derived from our module tree, so
it covers every parameter or fails naming the keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from torch import Tensor, nn

from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.model.vae.blocks import AttentionBlock, Downsample, ResBlock, Upsample
from worldloop.model.vae.config import VAEConfig, wan_vae

Layout = Literal["diffusers", "original"]
# Wan's published per-channel latent statistics (wan/modules/vae.py ``WanVAE``; diffusers config).
WAN_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
STRIP_PREFIXES = ("vae.", "first_stage_model.", "model.", "module.")
FILE_NAMES = ("vae/diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors")

# Parameter suffixes inside one block: ours -> (diffusers, original).
_RES = {
    "norm1.gamma": ("norm1.gamma", "residual.0.gamma"),
    "conv1.weight": ("conv1.weight", "residual.2.weight"),
    "conv1.bias": ("conv1.bias", "residual.2.bias"),
    "norm2.gamma": ("norm2.gamma", "residual.3.gamma"),
    "conv2.weight": ("conv2.weight", "residual.6.weight"),
    "conv2.bias": ("conv2.bias", "residual.6.bias"),
    "shortcut.weight": ("conv_shortcut.weight", "shortcut.weight"),
    "shortcut.bias": ("conv_shortcut.bias", "shortcut.bias"),
}
_ATTN = {
    "norm.gamma": ("norm.gamma",) * 2,
    "qkv.weight": ("to_qkv.weight",) * 2,
    "qkv.bias": ("to_qkv.bias",) * 2,
    "proj.weight": ("proj.weight",) * 2,
    "proj.bias": ("proj.bias",) * 2,
}
_RESAMPLE = {
    "spatial.weight": ("resample.1.weight",) * 2,
    "spatial.bias": ("resample.1.bias",) * 2,
    "time_conv.weight": ("time_conv.weight",) * 2,
    "time_conv.bias": ("time_conv.bias",) * 2,
}
_CONV = {"weight": ("weight",) * 2, "bias": ("bias",) * 2}
_NORM = {"gamma": ("gamma",) * 2}


def _suffixes(module: nn.Module) -> dict[str, tuple[str, str]]:
    if isinstance(module, ResBlock):
        return _RES
    if isinstance(module, AttentionBlock):
        return _ATTN
    if isinstance(module, Downsample | Upsample):
        return _RESAMPLE
    return _NORM if hasattr(module, "gamma") else _CONV


def _mid(i: int, *, diffusers: bool) -> str:
    """Wan name of mid block ``i`` (res, attention, res)."""
    if not diffusers:
        return f"middle.{i}"
    return "mid_block.attentions.0" if i == 1 else f"mid_block.resnets.{i // 2}"


def _blocks(vae: CausalVideoVAE, layout: Layout) -> Iterator[tuple[str, nn.Module, str]]:
    """(our prefix, module, Wan prefix) for every block of ``vae``."""
    d = layout == "diffusers"
    enc, dec = vae.encoder, vae.decoder
    yield "encoder.conv_in", enc.conv_in, "encoder.conv_in" if d else "encoder.conv1"
    for k, block in enumerate(enc.down):
        yield f"encoder.down.{k}", block, f"encoder.{'down_blocks' if d else 'downsamples'}.{k}"
    for k, block in enumerate(enc.mid):
        yield f"encoder.mid.{k}", block, f"encoder.{_mid(k, diffusers=d)}"
    yield "encoder.norm_out", enc.norm_out, "encoder.norm_out" if d else "encoder.head.0"
    yield "encoder.conv_out", enc.conv_out, "encoder.conv_out" if d else "encoder.head.2"
    yield "encoder.quant", enc.quant, "quant_conv" if d else "conv1"
    yield "decoder.post_quant", dec.post_quant, "post_quant_conv" if d else "conv2"
    yield "decoder.conv_in", dec.conv_in, "decoder.conv_in" if d else "decoder.conv1"
    stage = res = 0
    for k, block in enumerate(dec.blocks):
        if k < 3:  # res, attention, res
            yield f"decoder.blocks.{k}", block, f"decoder.{_mid(k, diffusers=d)}"
            continue
        if not d:
            yield f"decoder.blocks.{k}", block, f"decoder.upsamples.{k - 3}"
        elif isinstance(block, Upsample):
            yield f"decoder.blocks.{k}", block, f"decoder.up_blocks.{stage}.upsamplers.0"
            stage, res = stage + 1, 0
        else:
            yield f"decoder.blocks.{k}", block, f"decoder.up_blocks.{stage}.resnets.{res}"
            res += 1
    yield "decoder.norm_out", dec.norm_out, "decoder.norm_out" if d else "decoder.head.0"
    yield "decoder.conv_out", dec.conv_out, "decoder.conv_out" if d else "decoder.head.2"


def wan_vae_key_map(vae: CausalVideoVAE, layout: Layout) -> dict[str, str]:
    """Wan key -> our parameter name, for every parameter of ``vae`` (a ``wan_vae()``-shaped model)."""
    if vae.cfg.patch_size != 1:
        raise ValueError("the Wan2.1 VAE has no patchify (patch_size must be 1)")
    column = 0 if layout == "diffusers" else 1
    params = dict(vae.named_parameters())
    mapping: dict[str, str] = {}
    for ours, module, theirs in _blocks(vae, layout):
        for suffix, names in _suffixes(module).items():
            if f"{ours}.{suffix}" in params:
                mapping[f"{theirs}.{names[column]}"] = f"{ours}.{suffix}"
    unmapped = sorted(set(params) - set(mapping.values()))
    assert not unmapped, f"Wan VAE map misses our parameters {unmapped}"
    return mapping


def detect_layout(keys: set[str]) -> Layout:
    """``diffusers`` or ``original`` from the key names; ValueError for anything else."""
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.", "quant_conv.")) for k in keys):
        return "diffusers"
    if any(k.startswith(("encoder.downsamples.", "decoder.upsamples.", "encoder.head.")) for k in keys):
        return "original"
    sample = sorted(keys)[:5]
    raise ValueError(f"not a Wan2.1 VAE state dict (neither diffusers nor original key names), e.g. {sample}")


def _strip(key: str) -> str:
    for prefix in STRIP_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:8])
    return f"{shown} (+{len(keys) - 8} more)" if len(keys) > 8 else shown


def convert_wan_vae_state(tensors: Mapping[str, Tensor], vae: CausalVideoVAE) -> dict[str, Tensor]:
    """A Wan VAE state dict (either layout) -> ``vae``'s parameter names and shapes.

    Raises ValueError naming unknown keys, missing keys, or a shape that differs from ours.
    """
    tensors = {_strip(k): v for k, v in tensors.items()}
    mapping = wan_vae_key_map(vae, detect_layout(set(tensors)))
    unknown = sorted(set(tensors) - set(mapping))
    missing = sorted(set(mapping) - set(tensors))
    if unknown or missing:
        raise ValueError(
            f"Wan VAE checkpoint does not match wan_vae(): unknown keys [{_listing(unknown)}]; "
            f"missing keys [{_listing(missing)}]"
        )
    params = dict(vae.named_parameters())
    out: dict[str, Tensor] = {}
    for theirs, ours in mapping.items():
        tensor, target = tensors[theirs], params[ours]
        if ours.endswith("gamma") and tensor.dim() > 1 and all(s == 1 for s in tensor.shape[1:]):
            tensor = tensor.reshape(tensor.shape[0])  # Wan's (C, 1, 1[, 1]) gain -> (C,)
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"Wan VAE key {theirs!r} has shape {tuple(tensors[theirs].shape)}, "
                f"{ours!r} expects {tuple(target.shape)} (wrong VAEConfig?)"
            )
        out[ours] = tensor
    return out


def _find_file(path: Path) -> Path:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: weights must be .safetensors (pickled .pth checkpoints are refused)")
        return path
    for name in FILE_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        raise ValueError(f"{path}: expected one of {FILE_NAMES} or a single *.safetensors, found {found}")
    return found[0]


def _latent_stats(file: Path, cfg: VAEConfig) -> tuple[Tensor, Tensor]:
    """latents_mean/std from a diffusers ``config.json`` next to the weights, else Wan's constants."""
    config = file.parent / "config.json"
    if config.is_file():
        raw = json.loads(config.read_text())
        if raw.get("is_residual") or raw.get("patch_size"):
            raise ValueError(f"{config}: a Wan2.2 TI2V (residual, patchified) VAE, not the Wan2.1 VAE")
        if "latents_mean" in raw and "latents_std" in raw:
            return torch.tensor(raw["latents_mean"]), torch.tensor(raw["latents_std"])
    if cfg.latent_channels != len(WAN_LATENTS_MEAN):
        raise ValueError(f"Wan's latent statistics are for 16 channels, config has {cfg.latent_channels}")
    return torch.tensor(WAN_LATENTS_MEAN), torch.tensor(WAN_LATENTS_STD)


def load_wan_vae(
    path: str | Path,
    *,
    cfg: VAEConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> CausalVideoVAE:
    """A ``CausalVideoVAE(cfg)`` holding the Wan VAE weights at ``path`` and Wan's latent statistics.

    Args:
        path: a ``.safetensors`` file, a diffusers VAE folder, or a pipeline folder with ``vae/``.
        cfg: the model shape (default :func:`wan_vae`; a narrower one only for tests).
        dtype, device: where the weights end up (the file may be bf16 or fp32).
    """
    cfg = cfg or wan_vae()
    file = _find_file(Path(path))
    with safe_open(str(file), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    with torch.device("meta"):
        vae = CausalVideoVAE(cfg)
    state: dict[str, Tensor] = dict(convert_wan_vae_state(tensors, vae))
    state["latents_mean"], state["latents_std"] = _latent_stats(file, cfg)
    vae.load_state_dict(state, strict=True, assign=True)
    return vae.to(device=device, dtype=dtype).eval()
