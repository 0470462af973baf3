"""VAE training objective: reconstruction (L1 or MSE) + KL to a unit Gaussian (DESIGN.md §5.1).

Wan also adds perceptual and adversarial terms at scale; those belong with a discriminator in a
trainer, not here."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from worldloop.model.vae.autoencoder import CausalVideoVAE


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over every latent element (a scalar)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


def vae_loss(
    model: CausalVideoVAE,
    video: Tensor,
    *,
    kl_weight: float,
    recon: Literal["l1", "mse"] = "l1",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Loss for one video batch (B, C, F, H, W) in [-1, 1]: ``recon + kl_weight · KL``.

    The latent is sampled from the posterior (reparameterised) and decoded through the same
    ``decode`` path inference uses. Returns the scalar loss and its parts as floats for logging.
    """
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be ≥ 0, got {kl_weight}")
    mean, logvar = model.encode_dist(video)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    z = mean + torch.exp(0.5 * logvar) * noise  # (B, z, T, h, w)
    out = model.decode(model.normalize_latents(z))
    recon_loss = F.l1_loss(out, video) if recon == "l1" else F.mse_loss(out, video)
    kl = kl_to_standard_normal(mean, logvar)
    loss = recon_loss + kl_weight * kl
    return loss, {"loss": float(loss.detach()), "recon": float(recon_loss.detach()), "kl": float(kl.detach())}
