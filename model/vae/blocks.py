"""Building blocks of the causal VAE (Wan2.1 layout). Every block maps (B, C, T, H, W) tensors and
mixes time only through :class:`CausalConv3d`, so the whole network stays causal and streamable."""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldloop.model.vae.causal_conv import CausalConv3d, DecodeCache, RowHalo


class RowGather(Protocol):
    """Height-tiled decode (set from outside: :mod:`worldloop.model.parallel.vae_decode`): the rows of
    every band of a frame, for the one layer that looks at the whole frame (the mid attention)."""

    def gather(self, x: Tensor, *, dim: int) -> Tensor:
        """This band's rows along ``dim`` -> every row of the frame along ``dim``, top to bottom."""
        ...


def frames_to_batch(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B·T, C, H, W) for per-frame 2-D ops."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def batch_to_frames(x: Tensor, *, batch: int) -> Tensor:
    """(B·T, C, H, W) -> (B, C, T, H, W)."""
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).transpose(1, 2)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C·p², T, H/p, W/p): fold each p×p pixel patch into channels.

    Channel order ``c·p² + j·p + i`` for the pixel at row offset ``i``, column offset ``j`` — Wan2.2's
    ``rearrange("b c f (h q) (w r) -> b (c r q) f h w")`` — so a Wan2.2-style checkpoint would load.
    """
    if patch_size == 1:
        return x
    b, c, t, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, t, h // p, p, w // p, p)  # (B, C, T, h, q, w, r)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: Tensor, patch_size: int) -> Tensor:
    """(B, C·p², T, h, w) -> (B, C, T, h·p, w·p): the inverse of :func:`patchify`."""
    if patch_size == 1:
        return x
    b, cpp, t, h, w = x.shape
    p = patch_size
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w)  # (B, C, r, q, T, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


class RMSNorm(nn.Module):
    """RMS norm over channels at each (t, h, w): no statistics across time, unlike GroupNorm, so
    it never leaks future frames into the past (Wan ``RMS_norm``; like Wan's VAE, a gain and no bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = channels**0.5
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, ...) -> same shape."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out: Tensor = F.normalize(x, dim=1) * self.scale * self.gamma.view(shape)
        return out


class ResBlock(nn.Module):
    """norm → SiLU → causal 3×3×3 conv, twice, plus a 1×1×1 shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel_size=3)
        self.norm2 = RMSNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel_size=3)
        self.shortcut: CausalConv3d | None = (
            CausalConv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor, cache: DecodeCache | None = None) -> Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        out: Tensor = h + (x if self.shortcut is None else self.shortcut(x))
        return out


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (causal in time)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        # Zero-init the output so the block starts as identity (Wan ``AttentionBlock``).
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(cast(Tensor, self.proj.bias))
        self.rows: RowGather | None = None  # height-tiled decode; None: the whole frame is here

    def forward(self, x: Tensor, cache: DecodeCache | None = None) -> Tensor:
        """(B, C, T, H, W) -> same shape; ``cache`` is unused (no time mixing).

        With :attr:`rows` the input is one band of H rows: its pixels attend to the whole frame's.
        """
        del cache
        b, c, _, h, w = x.shape
        frames = frames_to_batch(self.norm(x))  # (B·T, C, H, W)
        q, k, v = self.qkv(frames).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (B·T, H·W, C) each
        if self.rows is not None:  # keys and values of every row; the queries stay this band's
            kv = torch.cat([k, v], dim=-1).unflatten(1, (h, w))  # (B·T, H, W, 2C)
            k, v = self.rows.gather(kv, dim=1).flatten(1, 2).chunk(2, dim=-1)  # (B·T, H_frame·W, C)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
        out = out.squeeze(1).transpose(1, 2).reshape(-1, c, h, w)  # (B·T, C, H, W)
        return x + batch_to_frames(self.proj(out), batch=b)


class Downsample(nn.Module):
    """Spatial ×2 (asymmetric zero pad + stride-2 conv), optionally time ×2 with the first frame kept.

    Time: output 0 is input frame 0; output ``j ≥ 1`` is a stride-2, kernel-3 conv over input frames
    ``2j-2, 2j-1, 2j`` — only the past and present, so ``1 + 2k`` frames become ``1 + k``.
    """

    def __init__(self, channels: int, *, temporal: bool) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(channels, channels, 3, stride=2)
        self.time_conv: nn.Conv3d | None = (
            nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1)) if temporal else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, C, T', H/2, W/2), T' = 1 + (T - 1)/2 when temporal else T."""
        b = x.shape[0]
        frames = F.pad(frames_to_batch(x), (0, 1, 0, 1))  # pad right/bottom only (Wan ZeroPad2d)
        x = batch_to_frames(self.spatial(frames), batch=b)
        if self.time_conv is None or x.shape[2] == 1:
            return x
        if (x.shape[2] - 1) % 2:
            raise ValueError(f"temporal downsample needs 1 + 2k frames, got {x.shape[2]}")
        return torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)


class Upsample(nn.Module):
    """Optional time ×2 (causal conv to 2C channels, split into 2 frames), then spatial ×2 with the
    channels halved (Wan ``upsample3d``).

    Time mirrors :class:`Downsample`: the first frame of a stream passes through alone (one frame),
    every other frame becomes two. As in Wan (its ``"Rep"`` cache marker) the first frame never enters
    the time conv: frame 1's conv sees zeros before it, so released Wan weights decode exactly.
    """

    def __init__(self, channels: int, *, temporal: bool) -> None:
        super().__init__()
        self.time_conv: CausalConv3d | None = (
            CausalConv3d(channels, channels * 2, kernel_size=(3, 1, 1)) if temporal else None
        )
        self.spatial = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.halo: RowHalo | None = None  # height-tiled decode; None: the whole frame is here

    def forward(self, x: Tensor, cache: DecodeCache | None = None) -> Tensor:
        """(B, C, T, H, W) -> (B, C/2, T', 2H, 2W); T' = 2T, or 2T - 1 on the first step."""
        b, c, t, h, w = x.shape
        if self.time_conv is not None:
            first = cache is None or cache.is_first_step
            rest = x[:, :, 1:] if first else x  # the stream's first frame skips the time conv
            if rest.shape[2] > 0:
                n = rest.shape[2]
                y = self.time_conv(rest, cache).view(b, 2, c, n, h, w)
                y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * n, h, w)  # frame 2i+j = half j of i
                x = torch.cat([x[:, :, :1], y], dim=2) if first else y
        # nearest ×2 maps rows [a, b) to [2a, 2b): a band upsamples to exactly its band of the output
        frames = F.interpolate(frames_to_batch(x), scale_factor=2.0, mode="nearest-exact")
        if self.halo is None:
            return batch_to_frames(self.spatial(frames), batch=b)
        frames = self.halo.extend(frames, rows=1)  # (B·T, C, 1 + 2H + 1, 2W)
        out = F.conv2d(frames, self.spatial.weight, self.spatial.bias, padding=(0, 1))
        return batch_to_frames(out, batch=b)
