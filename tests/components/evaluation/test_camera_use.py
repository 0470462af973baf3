"""The camera-use measure: a model whose camera path adds nothing scores every camera alike (gain 0,
exactly); one whose I2V channels follow the camera (``i2v_warp``) does not."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from worldloop.components.evaluation.quality.camera_use import camera_use
from worldloop.components.evaluation.quality.heldout import held_out_set
from worldloop.model import WorldModel
from worldloop.platform.stack import load_model_stack


def _with_output(model: WorldModel) -> WorldModel:
    """Wan zero-initialises each expert's output projection: give it weights so the inputs show."""
    for e in range(model.cfg.num_experts):
        torch.nn.init.normal_(model.expert(e).head.head.weight, std=0.02)
    return model


def test_camera_use_sees_which_camera_reaches_the_model() -> None:
    torch.manual_seed(3)
    stack = load_model_stack("preset:tiny", seed=3)
    stack = replace(stack, model=_with_output(stack.model))
    assert stack.model.cfg.i2v_warp is not None
    held = held_out_set(stack.spec, clips=2, blocks=1)
    warped = camera_use(stack, held, sigmas=(0.6,), repeats=1)
    assert set(warped) == {
        "x0_mse.true.sigma0.6", "x0_mse.permuted.sigma0.6", "x0_mse.static.sigma0.6",
        "x0_mse.true", "x0_mse.permuted", "x0_mse.static", "gain.permuted", "gain.static",
    }  # fmt: skip
    assert warped["gain.static"] != 0.0  # the warp moves the still latent the model reads

    # Without the warp, a freshly built model's camera encoder outputs zeros: the camera adds nothing.
    cfg = stack.model.cfg.model_copy(update={"i2v_warp": None, "i2v_warp_pixels": False})
    torch.manual_seed(3)
    plain = replace(
        stack, model=_with_output(WorldModel(cfg).eval()), spec=stack.spec.model_copy(update={"model": cfg})
    )
    scores = camera_use(plain, held, sigmas=(0.6,), repeats=1)
    assert scores["gain.permuted"] == 0.0 and scores["gain.static"] == 0.0
    assert scores["x0_mse.true"] > 0

    with pytest.raises(ValueError, match="at least 2"):
        camera_use(stack, replace(held, clips=held.clips[:1]))
