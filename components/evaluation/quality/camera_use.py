"""Does the model read its camera? Its denoising error on held-out clips under the clip's own camera,
under another clip's camera, and under a camera that never moves.

A model that follows its controls predicts the clean latents best with the true camera: the error
under another clip's camera (``permuted``) is higher, and a still camera (``static``) is worse too when
the clips move. A model that ignores its camera scores the three alike — what the tiny model trained
from scratch did before the I2V warp (``ModelConfig.i2v_warp``): its rollouts turned and moved at random.

The error is the mean squared error of the predicted clean latents x̂0 = x_t − σ·v of the generated
latent frames (frame 0 is the clean reference), at fixed noise levels σ with the same noise for every
camera, so the differences are the camera's alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from worldloop.components.evaluation.quality.heldout import HeldOutSet
from worldloop.model.arch.warp import i2v_stills
from worldloop.model.arch.world_model import i2v_condition
from worldloop.model.camera.intrinsics import intrinsics_from_fov
from worldloop.model.diffusion.flow_matching import add_noise
from worldloop.model.train.objectives.batch import prepare_batch
from worldloop.model.train.objectives.flow_matching import predict_velocity
from worldloop.model.train.windows import Window
from worldloop.platform.stack import ModelStack

CAMERAS = ("true", "permuted", "static")
SIGMAS = (0.4, 0.6, 0.8, 0.95)


def held_out_windows(held: HeldOutSet) -> list[Window]:
    """The held-out clips as training windows (whole clip, its own camera, its short caption)."""
    k = torch.from_numpy(intrinsics_from_fov(held.width, held.height, held.cfg.fov_deg)).float()
    windows = []
    for clip in held.clips:
        video = torch.from_numpy(clip.frames).float().permute(3, 0, 1, 2) / 127.5 - 1.0
        frames = video.shape[1]
        windows.append(
            Window(video, k.expand(frames, 3, 3).clone(), torch.from_numpy(clip.c2w).float(), clip.prompt)
        )
    return windows


@torch.no_grad()
def camera_use(
    stack: ModelStack, held: HeldOutSet, *, sigmas: Sequence[float] = SIGMAS, repeats: int = 2, seed: int = 0
) -> dict[str, float]:
    """``x0_mse.<camera>.sigma<σ>`` for each camera and σ, their means over σ (``x0_mse.<camera>``), and
    ``gain.permuted`` / ``gain.static``: how much higher the mean error is under that camera than under
    the true one, as a fraction of the true one's (> 0: the model reads its camera)."""
    if len(held.clips) < 2:
        raise ValueError("camera use needs at least 2 held-out clips (one's camera is given to another)")
    model, cfg = stack.model, stack.model.cfg
    windows = held_out_windows(held)
    batch = prepare_batch(
        windows,
        vae=stack.vae,
        text_encoder=stack.text_encoder,
        with_instruction=False,
        i2v=cfg,
    )
    n = batch.latents.shape[0]
    cameras = {
        "true": batch.camera,
        "permuted": batch.camera[torch.roll(torch.arange(n), 1)],
        "static": batch.camera[:, :1].expand_as(batch.camera).contiguous(),
    }
    x0 = batch.latents
    inputs = {name: batch for name in cameras}
    if cfg.i2v_warp_pixels:  # the views in the I2V channels are the camera's too, as in a rollout
        images = torch.stack([w.video[:, 0] for w in windows])
        stride = cfg.vae.temporal_stride
        for name, camera in cameras.items():
            if name == "true":  # the true camera's views are the batch's own
                continue
            still = i2v_stills(cfg, stack.vae, reference=x0[:, :, :1], image=images, camera=camera)
            cond = i2v_condition(x0[:, :, :1], num_frames=x0.shape[2], temporal_stride=stride, still=still)
            inputs[name] = replace(batch, cond=cond, still=still)
    out: dict[str, float] = {}
    for sigma in sigmas:
        levels = torch.full((n, x0.shape[2]), float(sigma))
        levels[:, 0] = 0.0  # the reference stays clean, as in training
        errors = {name: 0.0 for name in CAMERAS}
        for r in range(repeats):
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed * 1000 + r))
            x_t = add_noise(x0, noise, levels)
            for name, camera in cameras.items():
                v = predict_velocity(model, x_t, levels, inputs[name], camera=camera)
                x0_hat = x_t - levels[:, None, :, None, None] * v.float()
                errors[name] += F.mse_loss(x0_hat[:, :, 1:], x0[:, :, 1:]).item() / repeats
        for name in CAMERAS:
            out[f"x0_mse.{name}.sigma{sigma:g}"] = errors[name]
    for name in CAMERAS:
        out[f"x0_mse.{name}"] = sum(out[f"x0_mse.{name}.sigma{s:g}"] for s in sigmas) / len(sigmas)
    for name in CAMERAS[1:]:
        out[f"gain.{name}"] = out[f"x0_mse.{name}"] / out["x0_mse.true"] - 1.0
    return out
