"""The velocity anchored on the I2V latent (``ModelConfig.i2v_anchor``).

With ``i2v_still`` (and ``i2v_warp``) every generated latent frame's I2V channels hold a guess of that
frame: the reference held still, or seen through a plane from the frame's camera. Decoded as it is,
that guess alone beats the tiny students on held-out clips (the ladder's ``plane`` rung), yet the
experts are given it only as input channels and must learn to copy it through the whole network.

With ``i2v_anchor = s`` the model's velocity is ``v_prior + experts``: ``v_prior`` is the exact
velocity ``E[ε − x0 | x_t]`` when the clean latent is Gaussian around the guess ``g`` with standard
deviation ``s`` per element, i.e. the posterior mean of ``x0`` is the Wiener estimate

    x̂0 = g + k·(x_t − (1 − σ)·g),   k = (1 − σ)·s² / ((1 − σ)²·s² + σ²),

and ``v_prior = (x_t − x̂0) / σ``, written so it stays finite at σ = 0. At σ = 1 it predicts
``x0 = g``; at σ → 0, ``x0 = x_t``. The experts' head is zero-initialised (Wan), so an untrained
model is that prior, and the experts learn the difference. The target the experts regress stays of
the same size as plain flow matching's (at σ = 1 it is ``g − x0``, at σ = 0 it is ``ε``).
"""

from __future__ import annotations

from torch import Tensor


def prior_velocity(latents: Tensor, guess: Tensor, timesteps: Tensor, *, std: float) -> Tensor:
    """``E[ε − x0 | x_t]`` for ``x0 ~ N(guess, std²)``, elementwise.

    Args:
        latents: (B, C, T, h, w) the noisy latents ``x_t = (1 − σ)·x0 + σ·ε``.
        guess: (B, C, T, h, w) the clean latents' mean (the I2V channels the experts read).
        timesteps: (B, T) per latent frame in [0, 1000] (σ = timesteps / 1000).
        std: the prior's standard deviation ``s`` (> 0).
    Returns:
        (B, C, T, h, w) in float32.
    """
    sigma = (timesteps.float() / 1000.0)[:, None, :, None, None]
    s2 = std * std
    keep = 1.0 - sigma
    u = latents.float() - keep * guess.float()
    denom = keep * keep * s2 + sigma * sigma
    # (x_t − x̂0)/σ = u·(1 − k)/σ − g, and (1 − k)/σ = (σ − (1 − σ)·s²) / denom: no division by σ.
    return u * ((sigma - keep * s2) / denom) - guess.float()


def anchored(
    raw: Tensor, latents: Tensor, seen: Tensor, timesteps: Tensor, *, stride: int, std: float
) -> Tensor:
    """The experts' output ``raw`` (B, C, T, h, w) plus :func:`prior_velocity` around the latent
    channels of ``seen`` (B, stride + C, T, h, w), the I2V condition the experts read; in ``raw``'s dtype."""
    prior = prior_velocity(latents, seen[:, stride:], timesteps, std=std)
    return (raw.float() + prior).to(raw.dtype)
