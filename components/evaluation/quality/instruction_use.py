"""Does the model read its instruction? Its denoising on held-out InterBench cases under the case's own
instruction, another case's instruction and none.

Each single-turn case of a SynthWorld suite has the shot with its event (``E``) and the same shot with
nothing triggered (``C``). The case's video E becomes a training window whose turn is issued at the
case's instruction frame; its latents are noised at a fixed σ (the same noise for every instruction) and
the model predicts the clean latents x̂0 = x_t − σ·v. Over the latent frames from the instruction on:

* ``x0_mse.<instruction>`` — the error against E's latents under the ``true`` instruction, the next
  case's (``wrong``: another kind, the suite cycles kinds) and ``none``; ``gain.wrong`` / ``gain.none``
  are how much higher the error is than under the true one (> 0: the instruction helps);
* ``toward`` — how far the true instruction moves the prediction from the one without it toward the
  event: ⟨x̂0(true) − x̂0(none), z_E − z_C⟩ / ‖z_E − z_C‖², averaged over cases (1: all the way from the
  no-event shot to the event, 0: the instruction changes nothing, < 0: away from it).

What it found (README, Measured): the tiny model trained through stage 2 scores the three instructions
alike (gains ≈ 0 %, ``toward`` ≈ 0) — it ignores the instruction, which is why InterBench's trigger
stays 0 — while one trained on a single clip and its counterfactual twin reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from worldloop.components.evaluation.interbench import commanded_path
from worldloop.components.evaluation.suite import InterBenchCase, LoadedSuite
from worldloop.components.synthworld import SynthConfig
from worldloop.model.camera.intrinsics import intrinsics_from_fov
from worldloop.model.diffusion.flow_matching import add_noise
from worldloop.model.train.objectives.batch import PreparedBatch, onset_latent_frame, prepare_batch
from worldloop.model.train.objectives.flow_matching import predict_velocity
from worldloop.model.train.windows import Turn, Window
from worldloop.platform.stack import ModelStack

INSTRUCTIONS = ("true", "wrong", "none")
SIGMAS = (0.8, 0.95)


def _windows(
    stack: ModelStack,
    suite: LoadedSuite,
    case: InterBenchCase,
    shots: list[tuple[np.ndarray, tuple[Turn, ...]]],
) -> list[Window]:
    """One window per (frames, turns), along the case's commanded camera path."""
    size = suite.suite.size
    k = torch.from_numpy(intrinsics_from_fov(size, size, SynthConfig().fov_deg)).float()
    c2w = torch.from_numpy(commanded_path(stack, suite, case)).float()
    windows = []
    for frames, turns in shots:
        video = torch.from_numpy(frames).float().permute(3, 0, 1, 2) / 127.5 - 1.0
        count = video.shape[1]
        windows.append(Window(video, k.expand(count, 3, 3).clone(), c2w[:count], case.prompt, turns))
    return windows


def _prepare(stack: ModelStack, windows: list[Window]) -> PreparedBatch:
    return prepare_batch(
        windows,
        vae=stack.vae,
        text_encoder=stack.text_encoder,
        with_instruction=True,
        i2v=stack.model.cfg,
    )


@torch.no_grad()
def instruction_use(
    stack: ModelStack,
    suite: LoadedSuite,
    *,
    cases: int | None = None,
    sigmas: Sequence[float] = SIGMAS,
    repeats: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """``x0_mse.<instruction>`` (means over σ and cases), ``gain.wrong`` / ``gain.none``, ``toward`` and
    ``toward.<σ>`` at each noise level (see the module's docstring) on the first ``cases`` single-turn
    cases of ``suite`` that have ground truth."""
    chosen = [c for c in suite.select(cases) if not c.multi_turn and suite.has_truth(c.id)]
    if len(chosen) < 2:
        raise ValueError("instruction use needs at least 2 single-turn cases with ground truth")
    model = stack.model
    errors = {name: 0.0 for name in INSTRUCTIONS}
    toward: dict[float, list[float]] = {float(sigma): [] for sigma in sigmas}
    for n, case in enumerate(chosen):
        truth = suite.truth(case.id)
        (issued,) = case.instructions()
        other = chosen[(n + 1) % len(chosen)].instructions()[0].instruction
        turns = {
            "true": (Turn(issued.instruction, issued.instruction_frame),),
            "wrong": (Turn(other, issued.instruction_frame),),
            "none": (),
        }
        # One batch, one row per instruction (the event's video each time), and the shot without it.
        batch = _prepare(stack, _windows(stack, suite, case, [(truth.event, t) for t in turns.values()]))
        (z_none,) = _prepare(stack, _windows(stack, suite, case, [(truth.counterfactual, ())])).latents
        z_event = batch.latents[:1]
        first = onset_latent_frame(issued.instruction_frame, temporal_stride=stack.vae.cfg.temporal_stride)
        after = slice(first, None)
        change = (z_event[0] - z_none)[:, after].float()
        for sigma in sigmas:
            levels = torch.full((len(turns), z_event.shape[2]), float(sigma))
            levels[:, 0] = 0.0  # the reference stays clean, as in training
            for r in range(repeats):
                noise = torch.randn(z_event.shape, generator=torch.Generator().manual_seed(seed * 1000 + r))
                x_t = add_noise(z_event, noise, levels[:1]).expand(len(turns), -1, -1, -1, -1)
                v = predict_velocity(model, x_t, levels, batch)
                x0_hat = (x_t - levels[:, None, :, None, None] * v.float())[:, :, after]
                err = (x0_hat - z_event[:, :, after]).pow(2).mean(dim=(1, 2, 3, 4))
                for name, e in zip(turns, err.tolist(), strict=True):
                    errors[name] += e / (repeats * len(sigmas) * len(chosen))
                moved = ((x0_hat[0] - x0_hat[2]) * change).sum() / change.pow(2).sum().clamp_min(1e-12)
                toward[float(sigma)].append(moved.item())
    out = {f"x0_mse.{name}": errors[name] for name in INSTRUCTIONS}
    for name in INSTRUCTIONS[1:]:
        out[f"gain.{name}"] = errors[name] / errors["true"] - 1.0
    out["toward"] = float(np.mean([m for per_sigma in toward.values() for m in per_sigma]))
    for sigma, moved in toward.items():  # which expert reads it: σ ≥ boundary is the high-noise one's
        out[f"toward.{sigma:g}"] = float(np.mean(moved))
    out["cases"] = float(len(chosen))
    return out
