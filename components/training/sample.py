"""A sample video at the end of a stage: the trained model streams a few blocks from a training clip's
first frame with the serving ``Rollout`` (same cache, same few-step schedule), written as MP4."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from worldloop.data import LoadedClip
from worldloop.model.arch.world_model import WorldModel
from worldloop.model.camera.actions import parse_action
from worldloop.model.rollout import Rollout
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.vae.autoencoder import CausalVideoVAE
from worldloop.video import encode_mp4

# A short walk: forward, a turn to the right, forward again.
SCRIPT = ("w", "w", "w+d", "w")


@torch.no_grad()
def sample_video(
    model: WorldModel,
    *,
    vae: CausalVideoVAE,
    text_encoder: TextEncoder,
    clip: LoadedClip,
    height: int,
    width: int,
    path: str | Path,
    blocks: int = 4,
    seed: int = 0,
    timesteps: Sequence[float] | None = None,
) -> Path:
    """Stream ``blocks`` blocks from ``clip``'s first frame and caption (sampling at ``timesteps``, the
    checkpoint's schedule); write them as MP4 to ``path``."""
    was_training = model.training
    model.eval()
    try:
        rollout = Rollout(
            model,
            vae=vae,
            text_encoder=text_encoder,
            height=height,
            width=width,
            timesteps=timesteps,
            generator=torch.Generator().manual_seed(seed),
        )
        first = torch.from_numpy(np.ascontiguousarray(clip.frames[0])).float().permute(2, 0, 1)[None]
        first = torch.nn.functional.interpolate(first / 127.5 - 1.0, size=(height, width), mode="bilinear")
        state, frame0 = rollout.start(first.clamp(-1, 1), prompt=clip.meta.captions.short)
        frames = [frame0]
        for i in range(blocks):
            keys = SCRIPT[i % len(SCRIPT)]
            actions = [parse_action(keys, mouse_dx=1.5 if "d" in keys else 0.0)] * rollout.frames_per_block
            frames.append(rollout.step(state, actions))
        encode_mp4(to_frames(torch.cat(frames, dim=2)[0]), path, fps=16)
        return Path(path)
    finally:
        model.train(was_training)


def to_frames(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] → (F, H, W, 3) uint8."""
    return ((video.float().permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def reconstruction_video(
    vae: CausalVideoVAE, *, clip: LoadedClip, height: int, width: int, path: str | Path, frames: int = 17
) -> Path:
    """Stage 0's sample: the first ``frames`` frames of ``clip`` beside the VAE's encode → decode of
    them (left: truth, right: reconstruction), as MP4."""
    was_training = vae.training
    vae.eval()
    try:
        count = min(frames, 1 + (clip.frames.shape[0] - 1) // 4 * 4)
        video = torch.from_numpy(np.ascontiguousarray(clip.frames[:count])).float().permute(3, 0, 1, 2)
        video = torch.nn.functional.interpolate(video / 127.5 - 1.0, size=(height, width), mode="bilinear")
        weight = next(vae.parameters())
        batch = video[None].clamp(-1, 1).to(weight)  # (1, 3, F, H, W)
        recon = vae.decode(vae.encode(batch)).clamp(-1, 1)
        side = torch.cat([batch[0], recon[0]], dim=-1)  # (3, F, H, 2W)
        encode_mp4(to_frames(side), path, fps=16)
        return Path(path)
    finally:
        vae.train(was_training)
