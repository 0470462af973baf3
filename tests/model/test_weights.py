"""Weights: safetensors round trip and the Wan2.2 I2V-A14B layout adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worldloop.model import WorldModel, tiny
from worldloop.model.weights import export_wan22_layout, load_model, load_wan22_experts, save_model


def _wan_expert_keys(num_layers: int) -> list[str]:
    """Parameter names of a Wan2.x DiT as published (written out, not derived from our modules)."""
    keys = [
        "patch_embedding.weight",
        "patch_embedding.bias",
        "text_embedding.0.weight",
        "text_embedding.0.bias",
        "text_embedding.2.weight",
        "text_embedding.2.bias",
        "time_embedding.0.weight",
        "time_embedding.0.bias",
        "time_embedding.2.weight",
        "time_embedding.2.bias",
        "time_projection.1.weight",
        "time_projection.1.bias",
        "head.head.weight",
        "head.head.bias",
        "head.modulation",
    ]
    for i in range(num_layers):
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                keys += [f"blocks.{i}.{attn}.{proj}.weight", f"blocks.{i}.{attn}.{proj}.bias"]
            keys += [f"blocks.{i}.{attn}.norm_q.weight", f"blocks.{i}.{attn}.norm_k.weight"]
        keys += [f"blocks.{i}.norm3.weight", f"blocks.{i}.norm3.bias", f"blocks.{i}.modulation"]
        keys += [f"blocks.{i}.ffn.0.weight", f"blocks.{i}.ffn.0.bias", f"blocks.{i}.ffn.2.weight"]
        keys += [f"blocks.{i}.ffn.2.bias"]
    return keys


def test_save_load_model_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WorldModel(tiny())
    path = save_model(model, tmp_path / "ckpt" / "model.safetensors")
    loaded = load_model(path)
    assert loaded.cfg == model.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob("ckpt/.*"))  # no temp files left behind


def test_pickle_is_refused(tmp_path: Path) -> None:
    torch.save({"x": torch.ones(1)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="safetensors"):
        load_model(tmp_path / "model.pt")


def test_wan22_layout_written_by_hand_loads_into_our_experts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WorldModel(tiny())
    ours = dict(model.experts[0].named_parameters())
    expected = _wan_expert_keys(tiny().num_layers)
    assert sorted(ours) == sorted(expected)  # our names are Wan's names
    for e, folder in enumerate(("high_noise_model", "low_noise_model")):
        tensors = {
            k: torch.full(ours[k].shape, float(e + 1))
            + torch.arange(ours[k].numel()).reshape(ours[k].shape) * 1e-3
            for k in expected
        }
        half = len(expected) // 2
        names = [
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00002-of-00002.safetensors",
        ]
        (tmp_path / folder).mkdir()
        save_file({f"model.{k}": tensors[k] for k in expected[:half]}, tmp_path / folder / names[0])
        save_file({k: tensors[k] for k in expected[half:]}, tmp_path / folder / names[1])
        weight_map = {f"model.{k}": names[0] for k in expected[:half]} | {
            k: names[1] for k in expected[half:]
        }
        (tmp_path / folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"weight_map": weight_map})
        )
    fresh = WorldModel(tiny())
    report = load_wan22_experts(fresh, tmp_path)
    assert report.loaded == {0: len(expected), 1: len(expected)}
    assert all(k.startswith(("camera_encoder.", "interaction.")) for k in report.not_in_checkpoint)
    w = fresh.experts[1].blocks[0].self_attn.q.weight
    assert (
        float(w.detach().flatten()[0]) == 2.0
        and float(fresh.experts[0].head.modulation.detach().flatten()[0]) == 1.0
    )


def test_wan22_export_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WorldModel(tiny())
    export_wan22_layout(model, tmp_path / "wan", shard_bytes=200_000)
    assert len(list((tmp_path / "wan" / "high_noise_model").glob("*.safetensors"))) > 1  # sharded
    fresh = WorldModel(tiny())
    load_wan22_experts(fresh, tmp_path / "wan")
    for a, b in zip(model.experts.parameters(), fresh.experts.parameters(), strict=True):
        assert torch.equal(a, b)
    bigger = tiny().model_copy(update={"dim": 256, "num_heads": 4})
    with pytest.raises(ValueError, match="shape"):
        load_wan22_experts(WorldModel(bigger), tmp_path / "wan")
    with pytest.raises(ValueError, match="low_noise_model"):
        load_wan22_experts(fresh, tmp_path / "missing")
