"""A learned linear block code under the VAE: PCA in, its transpose out, the networks learn the rest.

Measured on held-out SynthWorld 64×64 clips (``benchmarks/bench_vae_recipes.py``): a linear code of 16
numbers per latent pixel and latent frame (PCA of the 8×8-pixel, 4-frame blocks) reconstructs at
22.3 dB, while the tiny VAE trained for minutes with the colour-means shortcut reaches 20.2 dB — its
decoder never gets past what it can learn in a few hundred steps. So the VAE's latent is made to start
*as* that linear code: the encoder's posterior mean is ``code(video) + network(video)`` and the
decoder's output is ``code⁺(z) + network(z)``, with both networks' last layers zeroed at construction
and the code fitted by :func:`fit_linear_code` (PCA of the training windows) before the first step.
Training then only improves on PCA. Unlike the fixed means shortcut (:mod:`.shortcut`), both maps are
parameters, and every latent channel carries code.

Blocks follow the VAE's causal layout: latent frame 0 covers video frame 0 alone, latent frame ``j ≥ 1``
the ``temporal_stride`` frames ``1 + stride·(j − 1) .. stride·j``; each latent pixel covers a
``spatial_stride``² pixel square. The two kinds of latent frame have their own maps. Both directions
act on one latent pixel and frame at a time, so streaming and height-tiled decode are unaffected.

"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from worldloop.model.vae.config import VAEConfig


def block_rows(video: Tensor, *, temporal: int, spatial: int) -> tuple[Tensor, Tensor]:
    """(B, C, F, H, W) -> rows of latent frame 0 (B, 1, h, w, s²·C) and of the later latent frames
    (B, T − 1, h, w, stride·s²·C): the pixels each latent pixel covers, in one fixed order."""
    b, c, f, hh, ww = video.shape
    s, h, w = spatial, hh // spatial, ww // spatial
    first = video[:, :, :1].reshape(b, c, 1, h, s, w, s).permute(0, 2, 3, 5, 4, 6, 1)
    rest = video[:, :, 1:].reshape(b, c, (f - 1) // temporal, temporal, h, s, w, s)
    rest = rest.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T-1, h, w, stride, s, s, C)
    return first.reshape(b, 1, h, w, s * s * c), rest.reshape(b, rest.shape[1], h, w, temporal * s * s * c)


def rows_to_video(rows: Tensor, *, frames: int, channels: int, spatial: int) -> Tensor:
    """Inverse of one half of :func:`block_rows`: (B, t, h, w, frames·s²·C) -> (B, C, t·frames, h·s, w·s)."""
    b, t, h, w, _ = rows.shape
    s = spatial
    x = rows.reshape(b, t, h, w, frames, s, s, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, t * frames, h * s, w * s)


class BlockEncode(nn.Module):
    """Encoder side: video (B, C, F, H, W) -> (B, n, T, h, w), one affine map per latent-frame kind."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        pixels = cfg.in_channels * cfg.spatial_stride**2
        self.cfg = cfg
        self.first = nn.Linear(pixels, cfg.latent_channels)
        self.rest = nn.Linear(pixels * cfg.temporal_stride, cfg.latent_channels)

    def forward(self, video: Tensor) -> Tensor:
        first, rest = block_rows(video, temporal=self.cfg.temporal_stride, spatial=self.cfg.spatial_stride)
        code = torch.cat([self.first(first), self.rest(rest)], dim=1)  # (B, T, h, w, n)
        return code.permute(0, 4, 1, 2, 3)


class BlockDecode(nn.Module):
    """Decoder side: (B, n, t, h, w) -> (B, C, t', H, W); ``first``: the stream's latent frame 0 is one
    frame (``t' = 1 + stride·(t − 1)``), else every latent frame is ``stride`` frames."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        pixels = cfg.in_channels * cfg.spatial_stride**2
        self.cfg = cfg
        self.first = nn.Linear(cfg.latent_channels, pixels)
        self.rest = nn.Linear(cfg.latent_channels, pixels * cfg.temporal_stride)

    def forward(self, z: Tensor, *, first: bool) -> Tensor:
        cfg = self.cfg
        rows = z.permute(0, 2, 3, 4, 1)  # (B, t, h, w, n)
        frames = []
        if first:
            frames.append(self._video(self.first(rows[:, :1]), frames=1))
            rows = rows[:, 1:]
        if rows.shape[1]:
            frames.append(self._video(self.rest(rows), frames=cfg.temporal_stride))
        return torch.cat(frames, dim=2)

    def _video(self, rows: Tensor, *, frames: int) -> Tensor:
        return rows_to_video(
            rows, frames=frames, channels=self.cfg.in_channels, spatial=self.cfg.spatial_stride
        )


@torch.no_grad()
def _pca(rows: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(N, P) float64 rows -> (mean (P,), the top ``n`` principal directions (n, P), orthonormal)."""
    mean = rows.mean(dim=0)
    _, _, vt = torch.linalg.svd(rows - mean, full_matrices=False)
    basis = vt[:n]
    if basis.shape[0] < n:  # fewer rows than channels: complete with zero directions (dead channels)
        basis = torch.cat([basis, basis.new_zeros(n - basis.shape[0], basis.shape[1])])
    return mean, basis


@torch.no_grad()
def fit_linear_code(encode: BlockEncode, decode: BlockDecode, videos: Iterable[Tensor]) -> float:
    """Set both maps to the PCA of ``videos``' blocks (batches (B, C, F, H, W) in [-1, 1]): encode =
    projection on the top ``latent_channels`` directions after removing the mean, decode = its transpose
    plus the mean. Returns the code's RMS coefficient (logged by the VAE stage)."""
    cfg = encode.cfg
    firsts, rests = [], []
    for video in videos:
        first, rest = block_rows(
            video.double().cpu(), temporal=cfg.temporal_stride, spatial=cfg.spatial_stride
        )
        firsts.append(first.reshape(-1, first.shape[-1]))
        rests.append(rest.reshape(-1, rest.shape[-1]))
    n = cfg.latent_channels
    sq, count = 0.0, 0
    for rows, enc, dec in (
        (torch.cat(firsts), encode.first, decode.first),
        (torch.cat(rests), encode.rest, decode.rest),
    ):
        if rows.shape[0] < 2:
            raise ValueError("fit_linear_code needs clips of at least 1 + temporal_stride frames")
        mean, basis = _pca(rows, n)
        enc.weight.copy_(basis)
        enc.bias.copy_(-(basis @ mean))
        dec.weight.copy_(basis.T)
        dec.bias.copy_(mean)
        coeffs = (rows - mean) @ basis.T
        sq += float(coeffs.square().sum())
        count += coeffs.numel()
    return (sq / max(1, count)) ** 0.5
