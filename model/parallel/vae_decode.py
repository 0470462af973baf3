"""Height-tiled VAE decode over the ranks of a process group, applied from outside the VAE (issue 19).

Each of the N ranks decodes one horizontal band of the latent rows — as even a split as the height
allows, top to bottom in rank order — through the unchanged :class:`~worldloop.model.vae.autoencoder.
Decoder` modules, whose hook attributes this module fills:

* every spatial conv (:attr:`CausalConv3d.halo`, :attr:`Upsample.halo`) extends its band by the rows
  its kernel reaches into the neighbouring bands, exchanged at that layer, and by zero rows at the
  frame's top and bottom: exactly the "same" zero padding of the whole-frame conv;
* the mid attention (:attr:`AttentionBlock.rows`), global over a frame, gathers the keys and values of
  every band and keeps its own band's queries;
* nearest ×2 upsampling turns latent rows ``[a, b)`` into output rows ``[2a, 2b)``, so the bands stay
  bands; the latent shortcut and (un)patchify are per pixel;
* :attr:`CausalVideoVAE.tiling` cuts the latents into this rank's band and all-gathers the decoded
  bands, so every rank returns the same whole frames, as Ulysses all-gathers the velocity.

Each rank's :class:`~worldloop.model.vae.causal_conv.DecodeCache` holds its band's causal frames (with
their halo rows, exchanged when those frames were new), so streaming block by block stays equal to
one-device decode. Decoding is inference only (the exchanges are not differentiable) and one decode at
a time per handle: the split of the call in flight is held here, and every rank of the group must run
the same decodes in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup

from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.model.vae.blocks import AttentionBlock, Upsample
from worldloop.model.vae.causal_conv import CausalConv3d


def split_rows(height: int, parts: int) -> list[int]:
    """Rows of each of ``parts`` bands of ``height`` rows, top to bottom; the first ``height % parts``
    bands are one row taller. Raises ``ValueError`` when a band would be empty."""
    if height < parts:
        raise ValueError(
            f"a height-tiled decode gives each of its {parts} ranks at least one of the {height} latent "
            f"rows: decode frames at least {parts} latent rows tall, or tile over at most {height} ranks"
        )
    base, extra = divmod(height, parts)
    return [base + (i < extra) for i in range(parts)]


class HeightTiling:
    """The hooks :func:`apply_tiled_decode` installs (DecodeTiling, RowHalo, RowGather in one); keep
    it to call :meth:`remove`."""

    def __init__(self, vae: CausalVideoVAE, group: ProcessGroup | None) -> None:
        self.vae = vae
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self._latent_rows: list[int] | None = None  # each rank's latent rows in the decode in flight

    # -- DecodeTiling (CausalVideoVAE.tiling) --------------------------------------------------------
    def band(self, latents: Tensor) -> Tensor:
        """(B, z, t, h, w) -> this rank's rows (B, z, t, h_band, w)."""
        rows = split_rows(latents.shape[3], self.world_size)
        self._latent_rows = rows
        return latents.narrow(3, sum(rows[: self.rank]), rows[self.rank])

    def join(self, video: Tensor) -> Tensor:
        """Every rank's decoded band (B, C, t', s·h_band, W) -> the frames (B, C, t', s·h, W)."""
        return self.gather(video, dim=3)

    # -- RowGather (AttentionBlock.rows) -------------------------------------------------------------
    def gather(self, x: Tensor, *, dim: int) -> Tensor:
        """This band's rows along ``dim`` -> every band's, top to bottom (the same on every rank)."""
        sizes = self._rows_at(x.shape[dim])
        tallest = max(sizes)
        if x.shape[dim] < tallest:  # gloo's all_gather needs one shape: pad, then trim each part
            pad = list(x.shape)
            pad[dim] = tallest - x.shape[dim]
            x = torch.cat([x, x.new_zeros(pad)], dim=dim)
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat([part.narrow(dim, 0, n) for part, n in zip(parts, sizes, strict=True)], dim=dim)

    # -- RowHalo (CausalConv3d.halo, Upsample.halo) --------------------------------------------------
    def extend(self, x: Tensor, *, rows: int) -> Tensor:
        """(..., h, W) band -> (..., rows + h + rows, W): the last ``rows`` rows of the band above and
        the first of the band below, zeros at the frame's top and bottom."""
        assert 0 < rows <= x.shape[-2], f"a {x.shape[-2]}-row band cannot lend {rows} halo rows"
        edges = torch.cat([x[..., :rows, :], x[..., -rows:, :]], dim=-2).contiguous()  # (..., 2·rows, W)
        parts = [torch.empty_like(edges) for _ in range(self.world_size)]
        dist.all_gather(parts, edges, group=self.group)
        zeros = x.new_zeros(*x.shape[:-2], rows, x.shape[-1])
        above = parts[self.rank - 1][..., rows:, :] if self.rank > 0 else zeros
        below = parts[self.rank + 1][..., :rows, :] if self.rank < self.world_size - 1 else zeros
        return torch.cat([above, x, below], dim=-2)

    def _rows_at(self, local_rows: int) -> list[int]:
        """Every rank's rows at the resolution where this rank holds ``local_rows``."""
        latent = self._latent_rows
        assert latent is not None, "a tiled layer ran outside CausalVideoVAE.decode_step"
        scale, rest = divmod(local_rows, latent[self.rank])
        assert rest == 0, f"{local_rows} rows are not a multiple of this band's {latent[self.rank]}"
        return [n * scale for n in latent]

    # -- lifecycle ------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Restore the one-device decoder (decode caches made while tiled hold bands: make new ones)."""
        _install(self.vae, None)


def _install(vae: CausalVideoVAE, tiling: HeightTiling | None) -> None:
    vae.tiling = tiling
    for module in vae.decoder.modules():
        if isinstance(module, (CausalConv3d, Upsample)):
            module.halo = tiling
        elif isinstance(module, AttentionBlock):
            module.rows = tiling


def apply_tiled_decode(vae: CausalVideoVAE, group: ProcessGroup | None = None) -> HeightTiling:
    """Make ``vae`` decode height-tiled over ``group`` (default: the world), in place.

    Every rank of ``group`` then makes the same ``decode``/``decode_step`` calls with the same latents
    (each with its own decode caches), decodes a band of ``h / N`` latent rows and returns the whole
    frames. ``decode_step`` raises ``ValueError`` for latents with fewer rows than ranks. Use a group of
    its own where other collectives may run at the same time (serving overlaps decode and denoise).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("a tiled decode needs torch.distributed.init_process_group(...) first")
    if vae.tiling is not None:
        raise ValueError("the VAE already decodes tiled: call .remove() on its handle first")
    tiling = HeightTiling(vae, group)
    _install(vae, tiling)
    return tiling
