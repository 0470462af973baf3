"""Classifier-free guidance (Ho & Salimans 2022) on velocity predictions."""

from __future__ import annotations

from torch import Tensor

from worldloop.model.diffusion.sampler import Denoiser


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """``uncond + scale·(cond − uncond)``: scale 1 is the conditional model, 0 the unconditional.

    Linear in the prediction, so it applies unchanged to velocity, x0 or noise predictions.
    """
    return uncond + scale * (cond - uncond)


def guided_denoiser(cond: Denoiser, uncond: Denoiser, *, scale: float) -> Denoiser:
    """Wrap two denoisers ``(x_t, t) -> v`` into one that returns the CFG-combined velocity.

    Scale 1 skips the unconditional pass: distilled students are sampled without guidance.
    """
    if scale == 1.0:
        return cond

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        return cfg_combine(cond(x_t, t), uncond(x_t, t), scale)

    return denoise
