"""Parameter-free latent shortcut: block means in, block repeats out (DC-AE; Wan2.2's ``AvgDown3D``).

A high-compression autoencoder trained for minutes stays on a plateau where its decoder ignores the
latent and paints the dataset's mean image (measured: 16 dB held-out on SynthWorld, below the 16.8 dB
of the mean image itself; ``benchmarks/bench_vae_recipes.py``). Adding a fixed, invertible-as-possible
path — the encoder's mean gets the colour means of ``cells × cells`` sub-blocks of each latent pixel
over the frames that latent frame covers, and the decoder's output gets those channels repeated back
over their pixels and frames — makes the model start at a thumbnail codec (20.5 dB with 2×2 cells)
and learn only the residual, as DC-AE's space-to-channel shortcuts and Wan2.2's residual VAE blocks do.
Both directions are causal and stateless per latent frame, so streaming decode is unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.model.vae.blocks import batch_to_frames, frames_to_batch, patchify, unpatchify


def block_means(video: Tensor, *, temporal: int, spatial: int, cells: int) -> Tensor:
    """(B, C, F, H, W) -> (B, C·cells², T, H/spatial, W/spatial) means, T = 1 + (F - 1)/temporal.

    Latent frame 0 averages frame 0 alone; latent frame ``j ≥ 1`` averages frames
    ``1 + temporal·(j-1) .. temporal·j`` — exactly the frames the encoder maps to it.
    """
    b, c, f, h, w = video.shape
    rest = video[:, :, 1:].reshape(b, c, (f - 1) // temporal, temporal, h, w).mean(dim=3)
    pooled = torch.cat([video[:, :, :1], rest], dim=2)  # (B, C, T, H, W)
    k = spatial // cells
    small = batch_to_frames(F.avg_pool2d(frames_to_batch(pooled), k), batch=b)  # (B, C, T, H/k, W/k)
    return patchify(small, cells)


def block_repeat(means: Tensor, *, temporal: int, spatial: int, cells: int, first: bool) -> Tensor:
    """(B, C·cells², t, h, w) -> (B, C, t', h·spatial, w·spatial): each mean over its pixels and frames.

    ``t' = 1 + temporal·(t - 1)`` when ``first`` (the stream's first latent frame is one frame),
    else ``temporal·t`` — the frame counts :meth:`CausalVideoVAE.decode_step` returns.
    """
    b = means.shape[0]
    small = unpatchify(means, cells)  # (B, C, t, h·cells, w·cells)
    k = spatial // cells
    full = batch_to_frames(F.interpolate(frames_to_batch(small), scale_factor=float(k)), batch=b)
    frames = full.repeat_interleave(temporal, dim=2)  # (B, C, temporal·t, H, W)
    return frames[:, :, temporal - 1 :] if first else frames
