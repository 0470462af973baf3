"""A sample video at the end of a stage: the trained model streams a few blocks from a training clip's
first frame with the serving ``Rollout`` (same cache, same few-step schedule), written as MP4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from worldloop.model.arch.world_model import WorldModel
from worldloop.model.camera.actions import parse_action
from worldloop.model.rollout import Rollout
from worldloop.model.text.encoder import TextEncoder
from worldloop.model.train.data import TrainClip
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
    clip: TrainClip,
    height: int,
    width: int,
    path: str | Path,
    blocks: int = 4,
    seed: int = 0,
) -> Path:
    """Stream ``blocks`` blocks from ``clip``'s first frame and caption; write them as MP4 to ``path``."""
    was_training = model.training
    model.eval()
    try:
        rollout = Rollout(
            model,
            vae=vae,
            text_encoder=text_encoder,
            height=height,
            width=width,
            generator=torch.Generator().manual_seed(seed),
        )
        first = torch.from_numpy(np.ascontiguousarray(clip.frames[0])).float().permute(2, 0, 1)[None]
        first = torch.nn.functional.interpolate(first / 127.5 - 1.0, size=(height, width), mode="bilinear")
        state, frame0 = rollout.start(first.clamp(-1, 1), prompt=clip.caption_short)
        frames = [frame0]
        for i in range(blocks):
            keys = SCRIPT[i % len(SCRIPT)]
            actions = [parse_action(keys, mouse_dx=1.5 if "d" in keys else 0.0)] * rollout.frames_per_block
            frames.append(rollout.step(state, actions))
        video = torch.cat(frames, dim=2)[0]  # (3, F, H, W) in [-1, 1]
        rgb = ((video.permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        encode_mp4(rgb, path, fps=16)
        return Path(path)
    finally:
        model.train(was_training)
