"""Camera encoder: per-pixel Plücker rays → tokens added to the video tokens (DESIGN.md §5.2).

GameCraft-1 style: the rays of the ``temporal_stride`` video frames behind one latent frame are stacked
on channels (temporal compression ×4, the first frame repeated, matching the VAE's first-frame-alone
layout), pixel-unshuffled to latent resolution, mixed by 1×1 convolutions and patch-embedded to the
model width. The output projection starts at zero, so a pretrained backbone is unchanged at step 0.
Each latent frame is encoded on its own, so the encoder is causal and streams block by block.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from worldloop.model.config import ModelConfig


def group_plucker(plucker: Tensor, *, temporal_stride: int) -> Tensor:
    """(B, F, 6, H, W) video-frame rays → (B, T, 6·stride, H, W) per latent frame, F = 1 + stride·(T−1)."""
    b, f, c, h, w = plucker.shape
    if (f - 1) % temporal_stride:
        raise ValueError(f"{f} frames is not 1 + {temporal_stride}·k; cannot group rays by latent frame")
    first = plucker[:, :1].expand(b, temporal_stride, c, h, w)  # frame 0 stands alone → repeated
    frames = torch.cat([first, plucker[:, 1:]], dim=1)  # (B, stride·T, 6, H, W)
    return frames.reshape(b, -1, temporal_stride * c, h, w)


class CameraEncoder(nn.Module):
    """(B, T, 6·stride, H, W) grouped rays → (B, T·P, dim) tokens (P tokens per latent frame)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        s = cfg.vae.spatial_stride
        in_ch = 6 * cfg.vae.temporal_stride * s * s
        self.unshuffle = nn.PixelUnshuffle(s)
        self.mix = nn.Sequential(
            nn.Conv2d(in_ch, cfg.camera_dim, 1),
            nn.SiLU(),
            nn.Conv2d(cfg.camera_dim, cfg.camera_dim, 1),
            nn.SiLU(),
        )
        ph, pw = cfg.patch_size[1:]
        self.out = nn.Conv2d(cfg.camera_dim, cfg.dim, kernel_size=(ph, pw), stride=(ph, pw))
        nn.init.zeros_(self.out.weight)  # zero-initialised output (DESIGN.md §5.2)
        nn.init.zeros_(cast(Tensor, self.out.bias))

    def forward(self, camera: Tensor) -> Tensor:
        b, t = camera.shape[:2]
        x = self.unshuffle(camera.flatten(0, 1))  # (B·T, 6·stride·s², h, w)
        x = self.out(self.mix(x))  # (B·T, dim, h', w')
        return x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])  # (B, T·P, dim)
