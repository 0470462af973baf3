"""Per-channel latent statistics from data, so the DiT sees ~unit-variance latents (DESIGN.md §5.1).

Wan ships 16 constants (``latents_mean``/``latents_std``) measured on its training data; a VAE we
train needs its own. They are the mean and standard deviation of the raw posterior mean — what
:meth:`CausalVideoVAE.encode` normalises — pooled over batch, time and space, per channel.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from worldloop.model.vae.autoencoder import CausalVideoVAE


@torch.no_grad()
def latent_stats(vae: CausalVideoVAE, videos: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel (mean, std) of the raw posterior means of ``videos``, each (z,) float32.

    Args:
        vae: the trained VAE (its current latent statistics are ignored).
        videos: batches (B, C, F, H, W) in [-1, 1]; a few clips suffice (every latent pixel counts).
    Returns:
        ``mean`` and ``std`` to pass to :meth:`CausalVideoVAE.set_latent_stats`. Accumulated in
        float64 so long sums do not lose the small variances of quiet channels.
    """
    z = vae.cfg.latent_channels
    total = torch.zeros(z, dtype=torch.float64)
    total_sq = torch.zeros(z, dtype=torch.float64)
    count = 0
    for video in videos:
        mean, _ = vae.encode_dist(video)  # (B, z, T, h, w), raw
        flat = mean.transpose(0, 1).reshape(z, -1).double().cpu()  # (z, B·T·h·w)
        total += flat.sum(dim=1)
        total_sq += flat.square().sum(dim=1)
        count += flat.shape[1]
    if count < 2:
        raise ValueError("latent_stats needs at least one video with two latent pixels")
    mu = total / count
    var = (total_sq / count - mu.square()).clamp_min(0.0) * count / (count - 1)
    # A dead channel (constant) would divide by ~0; floor its std so it stays finite.
    std = var.sqrt().clamp_min(1e-4)
    return mu.float(), std.float()


def fit_latent_stats(vae: CausalVideoVAE, videos: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Measure :func:`latent_stats` and store them in ``vae`` (in place); returns them too."""
    mean, std = latent_stats(vae, videos)
    vae.set_latent_stats(mean.to(vae.latents_mean), std.to(vae.latents_std))
    return mean, std
