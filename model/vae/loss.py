"""VAE training objective (DESIGN.md §5.1): pixel reconstruction + SSIM + a small KL to N(0, I).

Pure functions of the model and a batch: the trainer owns the optimiser and the loop. The structural
term is SSIM (Wang et al. 2004), the cheapest there is (a separable Gaussian blur: 4–14% of a tiny VAE
step on a shared CPU). In minutes-long CPU runs it measured no gain — held-out PSNR/SSIM within noise
of L1 alone (``benchmarks/bench_vae_recipes.py``) — so the tiny recipe leaves ``ssim_weight`` at 0; it
is here for longer runs, where blur rather than colour is the remaining error. Wan also adds LPIPS and
a GAN term at scale; those need a pretrained network or a discriminator and belong with a GPU trainer.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.model.vae.blocks import frames_to_batch

SSIM_WINDOW = 11  # Gaussian window and width of Wang et al. (2004), §III-C
SSIM_SIGMA = 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # stabilisers for data range 1


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over every latent element (a scalar)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


def _gaussian_kernel(channels: int, *, like: Tensor) -> Tensor:
    """(C, 1, 1, W) normalised 1-D Gaussian, one depthwise filter per channel (separable blur)."""
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = (g / g.sum()).to(device=like.device, dtype=like.dtype)
    return g.view(1, 1, 1, -1).expand(channels, 1, 1, SSIM_WINDOW).contiguous()


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Differentiable SSIM of each frame pair, in [-1, 1] (1 = identical).

    Args:
        x, y: (N, C, H, W) images with values in [0, 1], H and W ≥ 11.
    Returns:
        (N,) SSIM averaged over channels and the valid (unpadded) window positions — the same
        definition as the evaluation metric ``components/evaluation/metrics/reference.py``, computed
        with a separable blur so it is cheap enough to sit in every training step.
    """
    c = x.shape[1]
    g = _gaussian_kernel(c, like=x)

    def blur(t: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, H - 10, W - 10)
        t = F.conv2d(t, g, groups=c)
        return F.conv2d(t, g.transpose(2, 3), groups=c)

    # Centre per frame first: (co)variances are shift-invariant and float32 cancels less.
    xc, yc = x - x.mean(dim=(2, 3), keepdim=True), y - y.mean(dim=(2, 3), keepdim=True)
    mu_x, mu_y = blur(x), blur(y)
    mu_xc, mu_yc = blur(xc), blur(yc)
    var_x = blur(xc * xc) - mu_xc**2
    var_y = blur(yc * yc) - mu_yc**2
    cov = blur(xc * yc) - mu_xc * mu_yc
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).flatten(1).mean(dim=1)


def vae_loss(
    vae: CausalVideoVAE,
    video: Tensor,
    *,
    kl_weight: float,
    ssim_weight: float = 0.0,
    pixel: Literal["l1", "mse"] = "l1",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Loss for one batch ``video`` (B, C, F, H, W) in [-1, 1]:
    ``pixel + ssim_weight · (1 - SSIM) + kl_weight · KL``.

    The latent is sampled from the posterior (reparameterised with ``generator``) and decoded through
    the same :meth:`~CausalVideoVAE.decode` path inference streams, so training never sees a decoder
    the engine does not run. Returns the scalar loss and, as floats for logging, its parts plus the
    batch PSNR (dB, from the MSE on [0, 1]) for a number comparable with the held-out metric.
    """
    if kl_weight < 0 or ssim_weight < 0:
        raise ValueError(f"kl_weight and ssim_weight must be ≥ 0, got {kl_weight}, {ssim_weight}")
    # 1. Encode and sample the posterior.
    mean, logvar = vae.encode_dist(video)  # (B, z, T, h, w) each
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    z = mean + torch.exp(0.5 * logvar) * noise
    # 2. Decode through the streaming path (one step over every latent frame).
    out = vae.decode(vae.normalize_latents(z))  # (B, C, F, H, W)
    # 3. Reconstruction terms.
    pixel_loss = F.l1_loss(out, video) if pixel == "l1" else F.mse_loss(out, video)
    loss = pixel_loss
    parts: dict[str, float] = {}
    if ssim_weight > 0:
        frames_out = frames_to_batch(out.add(1).mul(0.5))  # (B·F, C, H, W) in [0, 1]
        frames_ref = frames_to_batch(video.add(1).mul(0.5))
        s = ssim(frames_out, frames_ref).mean()
        loss = loss + ssim_weight * (1.0 - s)
        parts["ssim"] = float(s.detach())
    # 4. KL to the unit Gaussian keeps the latent space smooth for the DiT.
    kl = kl_to_standard_normal(mean, logvar)
    loss = loss + kl_weight * kl
    mse = float(F.mse_loss(out.detach(), video).div(4))  # on [0, 1]
    parts.update(
        loss=float(loss.detach()),
        pixel=float(pixel_loss.detach()),
        kl=float(kl.detach()),
        psnr=-10.0 * math.log10(max(mse, 1e-10)),
    )
    return loss, parts
