"""Loading a model stack from a URI: every loader rebuilds the model from the checkpoint's spec, and the
big presets' training and serving stacks are built by the product code itself (on the meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from worldloop.components.training.run import training_stack
from worldloop.model.spec import SamplingSchedule, build_modules, preset_spec, write_spec
from worldloop.model.train.config import stage_preset
from worldloop.platform.stack import load_model_stack
from worldloop.settings import Settings


def _write_checkpoint(folder: Path, *, seed: int, schedule: SamplingSchedule | None = None) -> Path:
    """A checkpoint folder as the training loop writes one: weights, VAE, spec, state."""
    spec = preset_spec("tiny", height=32, width=48)
    if schedule is not None:
        spec = spec.with_schedule(schedule)
    model, vae = build_modules(spec, seed=seed)
    with torch.no_grad():  # the zero-initialised head too, so a random-init model would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(folder / "vae.safetensors"))
    write_spec(folder, spec)
    (folder / "state.json").write_text(json.dumps({"step": 1, "config": {"stage": "long"}}))
    return folder


def test_a_checkpoint_loads_from_its_spec_with_its_vae_and_schedule(tmp_path: Path) -> None:
    schedule = SamplingSchedule(timesteps=(1000.0, 900.0, 500.0))
    folder = _write_checkpoint(tmp_path / "run" / "step-00000001", seed=3, schedule=schedule)
    (tmp_path / "run" / "latest").write_text("step-00000001\n")
    settings = Settings(home=tmp_path / "home")
    stack = load_model_stack(str(tmp_path / "run"), settings=settings)  # a training output folder
    assert stack.checkpoint == folder and stack.trained and stack.version is None
    assert (stack.spec.height, stack.spec.width) == (32, 48)
    assert stack.timesteps == [1000.0, 900.0, 500.0]  # the student's own schedule, not a default
    for name, value in load_file(str(folder / "vae.safetensors")).items():
        assert torch.equal(stack.vae.state_dict()[name], value), name
    for name, value in load_file(str(folder / "model.safetensors")).items():
        assert torch.equal(stack.model.state_dict()[name], value), name
    fresh, _ = build_modules(stack.spec, seed=0)  # what loading would give had it ignored the files
    head = "experts.0.head.head.weight"
    assert head in fresh.state_dict() and not torch.equal(
        fresh.state_dict()[head], stack.model.state_dict()[head]
    )


def test_a_checkpoint_without_a_spec_is_refused_with_a_reason(tmp_path: Path) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt", seed=0)
    (folder / "spec.json").unlink()
    with pytest.raises(FileNotFoundError, match="no spec.json"):
        load_model_stack(str(folder), settings=Settings(home=tmp_path / "home"))


def test_a_checkpoint_without_its_vae_is_refused(tmp_path: Path) -> None:
    folder = _write_checkpoint(tmp_path / "ckpt", seed=0)
    (folder / "vae.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no vae.safetensors"):
        load_model_stack(str(folder), settings=Settings(home=tmp_path / "home"))


def test_preset_stacks_are_random_weights_at_a_default_size(tmp_path: Path) -> None:
    stack = load_model_stack("preset:tiny", settings=Settings(home=tmp_path), seed=1)
    again = load_model_stack("preset:tiny", settings=Settings(home=tmp_path), seed=1)
    assert not stack.trained and (stack.spec.height, stack.spec.width) == (64, 64)
    assert stack.spec.text_encoder.kind == "minilm" and stack.text_encoder.dim == 384
    for (name, a), b in zip(stack.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("preset", ["small", "a14b"])
def test_big_presets_build_offline_on_the_meta_device(preset: str, tmp_path: Path) -> None:
    """Serving and training stacks of small/a14b, built by the product code: the offline MiniLM speaks
    to the 4096-wide text input through a learned projection."""
    settings = Settings(home=tmp_path)
    served = load_model_stack(f"preset:{preset}", settings=settings, device="meta")
    assert served.model.cfg.text_dim == 4096 and served.model.cfg.text_input_dim == 384
    assert served.model.text_projection is not None and served.model.text_projection.weight.is_meta
    assert next(served.vae.parameters()).is_meta
    cfg = stage_preset("action", scale=preset)
    spec, model, vae, encoder = training_stack(cfg, init=None, resume=None, settings=settings, device="meta")
    assert (spec.height, spec.width) == (cfg.height, cfg.width) == (480, 832)
    assert encoder.dim == model.cfg.text_encoder_dim == 384
    assert all(p.is_meta for p in model.parameters()) and all(p.is_meta for p in vae.parameters())
    assert model.cfg.parameters_per_expert() == sum(p.numel() for p in model.expert(0).parameters())
