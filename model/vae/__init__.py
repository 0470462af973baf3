"""Causal 3-D video VAE (temporal ×4, spatial ×8, 16 channels) with streaming decode (DESIGN.md §5.1)."""

from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.model.vae.causal_conv import CausalConv3d, DecodeCache
from worldloop.model.vae.config import VAEConfig, tiny_vae, wan_vae
from worldloop.model.vae.latent_stats import fit_latent_stats, latent_stats
from worldloop.model.vae.loss import kl_to_standard_normal, ssim, vae_loss
from worldloop.model.vae.recipe import VAETrainConfig, tiny_vae_recipe

__all__ = [
    "CausalConv3d",
    "CausalVideoVAE",
    "DecodeCache",
    "VAEConfig",
    "VAETrainConfig",
    "fit_latent_stats",
    "kl_to_standard_normal",
    "latent_stats",
    "ssim",
    "tiny_vae",
    "tiny_vae_recipe",
    "vae_loss",
    "wan_vae",
]
