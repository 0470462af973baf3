"""Causal 3-D convolution and the typed per-layer time cache used by streaming decode.

A causal conv pads only on the past side in time, so output frame ``t`` sees input frames
``t - k_t + 1 .. t``. Streaming keeps the last ``k_t - 1`` input frames of every such conv in a
:class:`DecodeCache`; feeding the next frames with that cache gives exactly what one pass over the
whole sequence would (Wan2.1 VAE ``feat_cache``, here with a fixed slot per layer instead of a
running index).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn


class RowHalo(Protocol):
    """Height-tiled decode (set from outside: :mod:`worldloop.model.parallel.vae_decode`): a module
    holding one horizontal band of every frame gets the rows its spatial kernel reaches past the band."""

    def extend(self, x: Tensor, *, rows: int) -> Tensor:
        """(..., h, W) band -> (..., rows + h + rows, W): the neighbouring bands' boundary rows, zeros at
        the frame's top and bottom (what "same" zero padding of the whole frame would add there)."""
        ...


@dataclass
class DecodeCache:
    """Past input frames of every causal conv in a decoder, owned by the caller.

    ``past[slot]`` is ``None`` before the first step, then always ``(B, C, k_t - 1, h, w)`` for
    the conv holding that slot: the memory is fixed however many steps run.
    """

    past: list[Tensor | None]
    num_latent_frames: int = field(default=0)

    @property
    def is_first_step(self) -> bool:
        """True until a step has run: the first latent frame decodes to one video frame."""
        return self.num_latent_frames == 0

    @property
    def num_bytes(self) -> int:
        """Bytes held by the cached frames."""
        return sum(t.numel() * t.element_size() for t in self.past if t is not None)

    def time_lengths(self) -> list[int]:
        """Cached time length per filled slot (each equals its conv's ``k_t - 1``)."""
        return [t.shape[2] for t in self.past if t is not None]

    def read(self, slot: int, like: Tensor, num_frames: int) -> Tensor:
        """The ``num_frames`` frames before ``like`` (B, C, T, H, W): zeros before the first step."""
        past = self.past[slot]
        if past is None:
            b, c, _, h, w = like.shape
            return like.new_zeros(b, c, num_frames, h, w)
        if past.shape[:2] != like.shape[:2] or past.shape[3:] != like.shape[3:]:
            raise ValueError(
                f"decode cache holds frames of shape {tuple(past.shape)} but the input is "
                f"{tuple(like.shape)}; start a new stream with new_decode_cache()"
            )
        return past

    def write(self, slot: int, frames: Tensor) -> None:
        # clone so the slot keeps only its few frames, not the whole concatenated input alive.
        self.past[slot] = frames.clone()


class CausalConv3d(nn.Conv3d):
    """Conv3d with zero padding on the past side in time and "same" padding in space.

    ``cache_slot`` is assigned by the owning decoder; encoder convs keep ``None`` and always see
    the whole sequence from its first frame.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int | tuple[int, int, int],
    ) -> None:
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        super().__init__(in_channels, out_channels, (kt, kh, kw), padding=(0, kh // 2, kw // 2))
        self.cache_slot: int | None = None
        self.halo: RowHalo | None = None  # height-tiled decode; None: the whole frame is here

    @property
    def past_frames(self) -> int:
        """Input frames before ``t`` that output frame ``t`` sees."""
        return int(self.kernel_size[0]) - 1

    def forward(self, x: Tensor, cache: DecodeCache | None = None) -> Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T, H, W); with ``cache``, continue the cached stream.

        With a :attr:`halo` the input is one band of rows: it is extended by the neighbours' rows
        before the time cache, so the cache keeps the extended frames and streaming stays exact.
        """
        padding = tuple(int(n) for n in self.padding)
        rows = int(self.kernel_size[1]) // 2
        if self.halo is not None and rows > 0:
            x = self.halo.extend(x, rows=rows)  # (B, C, T, rows + h + rows, W)
            padding = (0, 0, padding[2])
        p = self.past_frames
        if p == 0:
            return self._conv(x, padding)
        if cache is None:
            past = x.new_zeros(x.shape[0], x.shape[1], p, *x.shape[3:])
            return self._conv(torch.cat([past, x], dim=2), padding)
        if self.cache_slot is None:
            raise RuntimeError("CausalConv3d got a cache but was never given a cache slot")
        x = torch.cat([cache.read(self.cache_slot, x, p), x], dim=2)  # (B, C, p + T, H, W)
        cache.write(self.cache_slot, x[:, :, -p:])
        return self._conv(x, padding)

    def _conv(self, x: Tensor, padding: tuple[int, ...]) -> Tensor:
        """The convolution (no time padding: the caller prepended the past frames).

        On CPU, PyTorch runs conv3d with its reference kernel (``slow_conv3d``), while conv2d goes
        to oneDNN; a time-stride-1 conv3d is a sum over its ``k_t`` time taps of conv2d on every
        frame, which measured 3.4–4.0× faster here (32 channels, 64², 1–2 threads) and is what
        makes the CPU VAE decode — most of a tiny rollout block — affordable. Same result up to
        float summation order. GPUs keep cuDNN's conv3d. ``padding`` is (time, height, width).
        """
        if (
            x.device.type != "cpu"
            or self.stride != (1, 1, 1)
            or self.dilation != (1, 1, 1)
            or self.groups != 1
        ):
            return nn.functional.conv3d(
                x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups
            )
        b, _, t, h, w = x.shape
        kt = int(self.kernel_size[0])
        frames = t - kt + 1
        out: Tensor | None = None
        for i in range(kt):
            taps = x[:, :, i : i + frames].transpose(1, 2).reshape(b * frames, -1, h, w)
            y = nn.functional.conv2d(taps, self.weight[:, :, i], None, padding=padding[1:])
            out = y if out is None else out + y
        assert out is not None
        out = out.reshape(b, frames, *out.shape[1:]).transpose(1, 2)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1, 1)
        return out.contiguous()


def assign_cache_slots(module: nn.Module) -> int:
    """Give every time-mixing CausalConv3d under ``module`` its own cache slot; returns the count."""
    num_slots = 0
    for conv in module.modules():
        if isinstance(conv, CausalConv3d) and conv.past_frames > 0:
            conv.cache_slot = num_slots
            num_slots += 1
    return num_slots
