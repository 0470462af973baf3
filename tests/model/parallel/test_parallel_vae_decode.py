"""Height-tiled VAE decode over gloo ranks == one-device decode (issue 19; STYLE.md "sequence-parallel ==
single device").

Each test spawns N CPU processes on gloo (as tests/model/parallel/test_sequence_parallel.py does).
Workers decode a whole clip and the same latents streamed block by block through their band's decode
cache, and save the gathered frames; the comparisons run here against one-device decode.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from worldloop.model.parallel.vae_decode import apply_tiled_decode, split_rows
from worldloop.model.vae import CausalVideoVAE, VAEConfig, tiny_vae

# Not bitwise in general: a band runs its convs (oneDNN) and attention on tensors of another height than
# the whole frame's, which may pick other kernels and summation orders. Measured on one thread: equal
# bits for the even splits, up to 2e-6 apart (outputs of magnitude ~1–4) for the 3 + 2 split.
TOL = {"atol": 1e-5, "rtol": 1e-5}
CONFIGS = {
    "tiny": tiny_vae(),  # patch 2, latent shortcut, two ×2 upsamples
    # patch 1 with the shortcut: the halo rows reach the full-resolution convs and the shortcut repeat
    "patch1": VAEConfig(
        base_channels=8,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(True, True),
        latent_shortcut=True,
    ),
    # the linear block code (per latent pixel, added to the network's output)
    "code": tiny_vae().model_copy(update={"latent_shortcut": False, "linear_code": True}),
    # the Wan2.1 layout (no patch, no shortcut, a spatial-only first upsample)
    "wan21": VAEConfig(
        base_channels=8,
        channel_multipliers=(1, 2, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(False, True, True),
    ),
}
STREAM = (1, 2, 2)  # latent frames per decode_step: the start frame, then blocks of 2 (as serving does)
WIDTH = 3  # latent columns: not square, so rows and columns cannot be confused


def _vae(name: str) -> CausalVideoVAE:
    torch.manual_seed(0)
    vae = CausalVideoVAE(CONFIGS[name]).eval()
    for m in vae.modules():  # the attention's zero-initialised output would hide its rows
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    if vae.decoder.code is not None:  # zeroed at construction (the code alone): give the network a say
        torch.nn.init.normal_(vae.decoder.conv_out.weight, std=0.05)
    z = vae.cfg.latent_channels
    vae.set_latent_stats(torch.linspace(-0.2, 0.2, z), torch.linspace(0.5, 1.5, z))
    return vae


def _latents(height: int, channels: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(height)
    return torch.randn(1, channels, sum(STREAM), height, WIDTH, generator=g)


def _decode(vae: CausalVideoVAE, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """The whole clip in one call, and the same latents streamed through one decode cache."""
    with torch.no_grad():
        clip = vae.decode(latents)
        cache, parts, start = vae.new_decode_cache(), [], 0
        for n in STREAM:
            parts.append(vae.decode_step(latents[:, :, start : start + n], cache))
            start += n
    return {"clip": clip, "stream": torch.cat(parts, dim=2)}


def _entry(rank: int, world_size: int, tmp: str, heights: tuple[int, ...]) -> None:
    torch.set_num_threads(1)  # N workers share the CI machine's cores
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world_size)
    try:
        results: dict[str, Any] = {}
        for name in CONFIGS:
            vae = _vae(name)
            tiling = apply_tiled_decode(vae)
            with pytest.raises(ValueError, match="already decodes tiled"):
                apply_tiled_decode(vae)
            for h in heights:
                results[f"{name}/{h}"] = _decode(vae, _latents(h, vae.cfg.latent_channels))
            with pytest.raises(ValueError, match=f"at least one of the {world_size - 1} latent rows"):
                vae.decode(_latents(world_size - 1, vae.cfg.latent_channels))
            tiling.remove()  # back to one device: no hooks, whole-frame caches
            assert vae.tiling is None
            results[f"{name}/removed"] = vae.decode(_latents(heights[0], vae.cfg.latent_channels))
        torch.save(results, Path(tmp) / f"decode{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("world", "heights"),
    [
        (2, (4, 5)),  # even bands, and 3 + 2 rows
        (4, (6, 4)),  # 2 + 2 + 1 + 1 rows, and one row each (the halo is the whole neighbour band)
    ],
)
def test_tiled_decode_equals_one_device(world: int, heights: tuple[int, ...]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(world, tmp, heights), nprocs=world, join=True)
        results = [torch.load(Path(tmp) / f"decode{r}.pt") for r in range(world)]
    for name in CONFIGS:
        vae = _vae(name)
        for h in heights:
            expected = _decode(vae, _latents(h, vae.cfg.latent_channels))
            torch.testing.assert_close(expected["stream"], expected["clip"], **TOL)  # the stream is exact
            for rank, result in enumerate(results):  # every rank returns the whole frames
                for key in ("clip", "stream"):
                    got = result[f"{name}/{h}"][key]
                    torch.testing.assert_close(got, expected[key], **TOL, msg=f"{name} h={h} rank {rank}")
        with torch.no_grad():
            single = vae.decode(_latents(heights[0], vae.cfg.latent_channels))
        for result in results:
            torch.testing.assert_close(result[f"{name}/removed"], single, **TOL)


def test_split_rows_is_as_even_as_possible_and_refuses_empty_bands() -> None:
    assert split_rows(6, 4) == [2, 2, 1, 1]
    assert split_rows(8, 2) == [4, 4]
    assert split_rows(3, 3) == [1, 1, 1]
    with pytest.raises(ValueError, match="tile over at most 3 ranks"):
        split_rows(3, 4)


@pytest.mark.skipif(dist.is_available() and dist.is_initialized(), reason="a process group is initialised")
def test_needs_an_initialised_process_group() -> None:
    # In a fresh interpreter: an earlier test of this session may have left this process a group.
    code = (
        "from worldloop.model.parallel.vae_decode import apply_tiled_decode\n"
        "from worldloop.model.vae import CausalVideoVAE, tiny_vae\n"
        "try:\n"
        "    apply_tiled_decode(CausalVideoVAE(tiny_vae()))\n"
        "except ValueError as why:\n"
        "    print(why)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "init_process_group" in out.stdout, out.stdout + out.stderr
