"""Causal 3-D video VAE (temporal ×4, spatial ×8, 16 channels) with streaming decode (DESIGN.md §5.1)."""

from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.model.vae.causal_conv import CausalConv3d, DecodeCache
from worldloop.model.vae.config import VAEConfig, tiny_vae, wan_vae
from worldloop.model.vae.loss import kl_to_standard_normal, vae_loss

__all__ = [
    "CausalConv3d",
    "CausalVideoVAE",
    "DecodeCache",
    "VAEConfig",
    "kl_to_standard_normal",
    "tiny_vae",
    "vae_loss",
    "wan_vae",
]
