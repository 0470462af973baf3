"""Helpers shared by the serving tests (imported by name: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import torch


def write_responsive_checkpoint(root: Path, *, seed: int = 0) -> Path:
    """A tiny 64×64 checkpoint with random weights in which every input matters.

    ``preset:tiny`` is initialised for training: its output head and camera projection start at zero
    (Wan's init), so an untrained model ignores keys and instructions. Here those zero tensors get
    small random values, which makes W and instructions change the frames — what the serving tests
    check — while staying an honest random model. Saved the way training saves: ``save_checkpoint``
    with the VAE as a frozen module (``vae.safetensors``), and the model's ``spec.json``.
    """
    from worldloop.model.spec import build_modules, preset_spec, write_spec
    from worldloop.model.train.checkpoint import save_checkpoint

    spec = preset_spec("tiny", height=64, width=64)
    model, vae = build_modules(spec, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1 and not bool(param.any()):
                param.copy_(torch.randn(param.shape, generator=g) * 1.0)
    state = {"config": {"model_preset": "tiny", "seed": seed, "height": 64, "width": 64}}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    folder = save_checkpoint(
        root, 1, model=model, optimizer=optimizer, ema={}, state=state, frozen={"vae": vae}
    )
    write_spec(folder, spec)
    return folder
