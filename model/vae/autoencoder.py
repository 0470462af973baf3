"""Causal 3-D video VAE (DESIGN.md §5.1; Wan2.1 VAE layout): encode, full decode, streaming decode.

Latents are ``(B, latent_channels, T, H/8, W/8)`` with ``T = 1 + (F - 1)/4``: the first frame is
encoded alone, every later latent frame covers 4 video frames (the spatial 8 is ``cfg.spatial_stride``:
the patch size times the downsamples). Time is mixed only by causal convs,
so decoding latent frames ``0..k`` never looks at ``k+1..``. :meth:`CausalVideoVAE.decode` is
:meth:`CausalVideoVAE.decode_step` over everything with a fresh cache, so the two cannot drift.

Latent scaling: like Wan, :meth:`~CausalVideoVAE.encode` returns ``(mu - latents_mean) / latents_std``
and :meth:`~CausalVideoVAE.decode` undoes it, with per-channel buffers that default to 0 and 1 (set
them from dataset statistics with :meth:`~CausalVideoVAE.set_latent_stats`). :meth:`encode_dist`
returns the raw (unscaled) posterior.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from torch import Tensor, nn

from worldloop.model.vae.blocks import (
    AttentionBlock,
    Downsample,
    ResBlock,
    RMSNorm,
    Upsample,
    patchify,
    unpatchify,
)
from worldloop.model.vae.causal_conv import CausalConv3d, DecodeCache, assign_cache_slots
from worldloop.model.vae.config import VAEConfig
from worldloop.model.vae.linear_code import BlockDecode, BlockEncode
from worldloop.model.vae.shortcut import block_means, block_repeat


class DecodeTiling(Protocol):
    """Height-tiled decode (set from outside: :mod:`worldloop.model.parallel.vae_decode`): each rank of
    a group decodes one band of latent rows, with its own :class:`DecodeCache`, and the bands are joined."""

    def band(self, latents: Tensor) -> Tensor:
        """(B, z, t, h, w) -> this rank's (B, z, t, h_band, w)."""
        ...

    def join(self, video: Tensor) -> Tensor:
        """This rank's decoded (B, C, t', s·h_band, s·w) -> the whole frames (B, C, t', s·h, s·w)."""
        ...


class Encoder(nn.Module):
    """Video (B, C, F, H, W) -> posterior moments (B, 2·latent_channels, T, H/8, W/8)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = cfg.stage_channels
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.conv_in = CausalConv3d(cfg.patch_channels, dims[0], kernel_size=3)
        down: list[nn.Module] = []
        in_ch = dims[0]
        for i, out_ch in enumerate(dims):
            for _ in range(cfg.num_res_blocks):
                down.append(ResBlock(in_ch, out_ch))
                in_ch = out_ch
            if i < len(dims) - 1:
                down.append(Downsample(out_ch, temporal=cfg.temporal_downsample[i]))
        self.down = nn.ModuleList(down)
        self.mid = nn.ModuleList([ResBlock(in_ch, in_ch), AttentionBlock(in_ch), ResBlock(in_ch, in_ch)])
        self.norm_out = RMSNorm(in_ch)
        self.conv_out = CausalConv3d(in_ch, 2 * cfg.latent_channels, kernel_size=3)
        self.quant = CausalConv3d(2 * cfg.latent_channels, 2 * cfg.latent_channels, kernel_size=1)
        with torch.no_grad():  # channels [z:] of the moments are the log-variance
            cast(Tensor, self.quant.bias)[cfg.latent_channels :].fill_(cfg.init_logvar)
        self.code = BlockEncode(cfg) if cfg.linear_code else None
        if self.code is not None:  # the posterior mean starts as the code alone
            with torch.no_grad():
                self.quant.weight[: cfg.latent_channels].zero_()
                cast(Tensor, self.quant.bias)[: cfg.latent_channels].zero_()

    def forward(self, video: Tensor) -> Tensor:
        """(B, C, F, H, W) -> (B, 2·z, T, H/8, W/8), the whole clip from its first frame."""
        x = self.conv_in(patchify(video, self.patch_size))  # (B, C·p², F, H/p, W/p) in
        for block in [*self.down, *self.mid]:
            x = block(x)
        moments: Tensor = self.quant(self.conv_out(torch.nn.functional.silu(self.norm_out(x))))
        if self.code is not None:
            z = self.cfg.latent_channels
            return torch.cat([moments[:, :z] + self.code(video), moments[:, z:]], dim=1)
        cells = self.cfg.shortcut_cells
        if cells == 0:
            return moments
        cfg = self.cfg
        means = block_means(video, temporal=cfg.temporal_stride, spatial=cfg.spatial_stride, cells=cells)
        n = means.shape[1]  # the first C·cells² channels of the posterior mean carry the shortcut
        return torch.cat([moments[:, :n] + means, moments[:, n:]], dim=1)


class Decoder(nn.Module):
    """Latents (B, z, t, h, w) -> video frames, continuing the stream held in a :class:`DecodeCache`."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = cfg.stage_channels[::-1]
        temporal_up = cfg.temporal_downsample[::-1]  # mirror the encoder
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.post_quant = CausalConv3d(cfg.latent_channels, cfg.latent_channels, kernel_size=1)
        self.conv_in = CausalConv3d(cfg.latent_channels, dims[0], kernel_size=3)
        blocks: list[nn.Module] = [ResBlock(dims[0], dims[0]), AttentionBlock(dims[0])]
        blocks.append(ResBlock(dims[0], dims[0]))
        in_ch = dims[0]
        for i, out_ch in enumerate(dims):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(in_ch, out_ch))
                in_ch = out_ch
            if i < len(dims) - 1:
                blocks.append(Upsample(out_ch, temporal=temporal_up[i]))
                in_ch = out_ch // 2  # the spatial upsample conv halves channels (Wan layout)
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(in_ch)
        self.conv_out = CausalConv3d(in_ch, cfg.patch_channels, kernel_size=3)
        self.num_cache_slots = assign_cache_slots(self)
        self.code = BlockDecode(cfg) if cfg.linear_code else None
        if self.code is not None:  # the output starts as the code alone
            with torch.no_grad():
                self.conv_out.weight.zero_()
                cast(Tensor, self.conv_out.bias).zero_()

    def forward(self, z: Tensor, cache: DecodeCache) -> Tensor:
        """(B, z, t, h, w) -> (B, C, t', 8h, 8w); t' = 1 + 4(t - 1) on the first step, else 4t.

        Advances ``cache`` in place (its cached frames and ``num_latent_frames``).
        """
        first = cache.is_first_step
        x = self.conv_in(self.post_quant(z), cache)
        for block in self.blocks:
            x = block(x, cache)
        out = self.conv_out(torch.nn.functional.silu(self.norm_out(x)), cache)  # (B, C·p², t', h', w')
        cache.num_latent_frames += z.shape[2]
        out = unpatchify(out, self.patch_size)
        if self.code is not None:
            return out + self.code(z, first=first)
        cells = self.cfg.shortcut_cells
        if cells == 0:
            return out
        n = self.cfg.in_channels * cells**2
        cfg = self.cfg
        return out + block_repeat(
            z[:, :n], temporal=cfg.temporal_stride, spatial=cfg.spatial_stride, cells=cells, first=first
        )


class CausalVideoVAE(nn.Module):
    """Causal video VAE: ``encode`` / ``encode_dist`` / ``decode`` / ``decode_step``."""

    latents_mean: Tensor
    latents_std: Tensor

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latents_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latents_std", torch.ones(cfg.latent_channels))
        self.tiling: DecodeTiling | None = None  # height-tiled decode over ranks; None: one device

    # 1. Latent scaling -------------------------------------------------------------------------
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set per-channel latent statistics (z,) used by encode/decode (Wan's latents_mean/std)."""
        z = self.cfg.latent_channels
        if mean.shape != (z,) or std.shape != (z,):
            raise ValueError(f"latent mean and std must have shape ({z},), got {mean.shape}, {std.shape}")
        if bool((std <= 0).any()):
            raise ValueError("latent std must be positive")
        self.latents_mean.copy_(mean)
        self.latents_std.copy_(std)

    def normalize_latents(self, z: Tensor) -> Tensor:
        """Raw posterior latents (B, z, T, h, w) -> the scaled latents the backbone sees."""
        return (z - self.latents_mean.view(1, -1, 1, 1, 1)) / self.latents_std.view(1, -1, 1, 1, 1)

    def denormalize_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents (B, z, T, h, w) -> raw decoder input."""
        return latents * self.latents_std.view(1, -1, 1, 1, 1) + self.latents_mean.view(1, -1, 1, 1, 1)

    # 2. Encode ---------------------------------------------------------------------------------
    def encode_dist(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Video (B, C, F, H, W) in [-1, 1] -> raw posterior (mean, logvar), each (B, z, T, h, w)."""
        if video.dim() != 5 or video.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"video must be (B, {self.cfg.in_channels}, F, H, W), got shape {tuple(video.shape)}"
            )
        self.cfg.latent_frames(video.shape[2])
        self.cfg.latent_size(video.shape[3], video.shape[4])
        mean, logvar = self.encoder(video).chunk(2, dim=1)
        return mean, logvar.clamp(self.cfg.logvar_min, self.cfg.logvar_max)

    def encode(
        self, video: Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Video (B, C, F, H, W) in [-1, 1] -> scaled latents (B, z, 1 + (F-1)/4, H/8, W/8).

        The posterior mean unless ``sample``, which draws ``mean + std·ε`` with ``generator``.
        """
        mean, logvar = self.encode_dist(video)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + torch.exp(0.5 * logvar) * noise
        return self.normalize_latents(mean)

    # 3. Decode ---------------------------------------------------------------------------------
    def new_decode_cache(self) -> DecodeCache:
        """An empty cache for a new stream; pass it to every :meth:`decode_step` of that stream."""
        return DecodeCache(past=[None] * self.decoder.num_cache_slots)

    def decode_step(self, latents: Tensor, cache: DecodeCache) -> Tensor:
        """Decode the next latent frames (B, z, t, h, w) of the stream held in ``cache``.

        Returns (B, C, t', 8h, 8w) with t' = 1 + 4(t - 1) on the first step and 4t afterwards,
        not clamped. Concatenating the outputs over any split equals :meth:`decode` of the whole.
        """
        if latents.dim() != 5 or latents.shape[1] != self.cfg.latent_channels or latents.shape[2] < 1:
            raise ValueError(
                f"latents must be (B, {self.cfg.latent_channels}, t ≥ 1, h, w), "
                f"got shape {tuple(latents.shape)}"
            )
        if self.tiling is not None:
            latents = self.tiling.band(latents)  # (B, z, t, h_band, w): the cache holds this band
        video: Tensor = self.decoder(self.denormalize_latents(latents), cache)
        return video if self.tiling is None else self.tiling.join(video)

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents (B, z, T, h, w) -> video (B, C, 1 + 4(T - 1), 8h, 8w), not clamped."""
        return self.decode_step(latents, self.new_decode_cache())

    @torch.no_grad()
    def still_latent(self, reference: Tensor) -> Tensor:
        """The latent frame (B, z, 1, h, w) that a video holding ``reference``'s image still has after
        its first frame: ``reference`` (B, z, 1, h, w), a first-frame latent, is decoded (clamped, as
        it is shown), repeated over 1 + ``temporal_stride`` frames and encoded again; latent frame 1
        is the answer. The world model's I2V channels carry it at every later frame when
        ``ModelConfig.i2v_still`` is set. Built from the latent alone, so training, the scores and
        serving derive the same one."""
        image = self.decode(reference[:, :, :1]).clamp(-1.0, 1.0)  # (B, C, 1, H, W)
        still = image.expand(-1, -1, 1 + self.cfg.temporal_stride, -1, -1)
        return self.encode(still)[:, :, 1:2]
