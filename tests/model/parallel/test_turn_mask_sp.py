"""Per-frame instruction turns under Ulysses sequence parallelism (issue 17): each worker holds a share
of every frame's tokens, and the per-token cross-attention mask is sharded with them, so the masked
bidirectional forward and its gradients equal the one-process ones. Conventions (gloo workers that
save, comparisons in the pytest process): ``test_sequence_parallel.py``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from test_sequence_parallel import SIZE, _model, _spawn, _train_step, assert_steps_equal

from worldloop.model import Conditioning, InstructionTurns, WorldModel, i2v_condition
from worldloop.model.parallel import apply_sequence_parallel


def _inputs(model: WorldModel) -> tuple[dict[str, Any], torch.Tensor]:
    """Three rows of a 5-latent-frame clip: two turns (one issued mid-clip), one turn, none yet."""
    g = torch.Generator().manual_seed(3)
    batch, t, h = 3, 5, SIZE // 8
    latents = torch.randn(batch, model.cfg.latent_channels, t, h, h, generator=g)
    timesteps = torch.cat(
        [torch.zeros(batch, 1), torch.tensor([[950.0], [300.0], [920.0]]).expand(-1, t - 1)], 1
    )
    text = torch.randn(batch, 6, model.cfg.text_dim, generator=g)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[0, 4:] = False
    inst = torch.randn(batch, 2, 3, model.cfg.text_dim, generator=g)
    inst_mask = torch.ones(batch, 2, 3, dtype=torch.bool)
    inst_mask[1:, 1] = False  # rows 1 and 2 have one turn
    frame_turn = torch.tensor([[-1, 0, 0, 1, 1], [0, 0, 0, 0, 0], [-1, -1, -1, -1, -1]])
    inputs = {
        "latents": latents,
        "timesteps": timesteps,
        "cond": i2v_condition(latents[:, :, :1], num_frames=t, temporal_stride=4),
        "camera": torch.randn(batch, t, 24, SIZE, SIZE, generator=g),
        "conditioning": Conditioning(text, mask, turns=InstructionTurns(inst, inst_mask, frame_turn)),
    }
    return inputs, torch.randn(latents.shape, generator=g)


def _worker(rank: int, tmp: Path, checkpointing: bool) -> None:
    model = _model()
    sp = apply_sequence_parallel(model)
    result = _train_step(model, sp, checkpointing=checkpointing, make_inputs=_inputs, causal=False)
    torch.save(result, tmp / f"turns{rank}.pt")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_masked_forward_and_gradients_equal_single_device(checkpointing: bool) -> None:
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        _spawn(_worker, world, Path(tmp), checkpointing)
        results = [torch.load(Path(tmp) / f"turns{r}.pt") for r in range(world)]
    expected = _train_step(_model(), None, checkpointing=False, make_inputs=_inputs, causal=False)
    assert_steps_equal(results, expected)
    # the interaction extractor trains through the turns' tokens (the sharded masks lose none)
    assert any(name.startswith("interaction.") for name in expected["grads"])
