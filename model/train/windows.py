"""Training windows: fixed-length pieces of the clips of a data mixture, resized, camera re-based,
captioned — deterministically (sample ``i`` of a phase is always the same window, so a resumed run
sees exactly the batches an uninterrupted one would, and rank ``r`` reads only its own samples).

Which clip sample ``i`` reads is the mixture's business (:class:`worldloop.data.ClipOrder`); this
module cuts the window out of it and makes the tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.data import LoadedClip, Mixture


@dataclass(frozen=True)
class Window:
    """A training sample: ``frames`` video frames resized to (height, width), camera re-based."""

    video: Tensor  # (3, F, H, W) float32 in [-1, 1]
    intrinsics: Tensor  # (F, 3, 3), scaled to the resized frames
    c2w: Tensor  # (F, 4, 4), c2w[0] = identity
    caption: str  # long or short scene caption, with the interaction caption appended when present
    instruction: str | None  # imperative ("open the door") or descriptive, drawn per sample
    instruction_frame: int | None = None  # window frame where it is issued (0: before the window)


class WindowSampler:
    """Deterministic windows of ``frames`` frames from the clips of ``data`` (clips shorter than that
    are left out)."""

    def __init__(
        self,
        data: Mixture,
        *,
        frames: int,
        height: int,
        width: int,
        seed: int,
        long_caption_prob: float = 0.5,
    ) -> None:
        self.data, self.order = data, data.order(frames=frames, seed=seed)
        self.frames, self.height, self.width = frames, height, width
        self.seed, self.long_caption_prob = seed, long_caption_prob

    def sample(self, index: int) -> Window:
        """Window ``index``: the clip comes from the mixture's order, the start and caption from the seed."""
        clip = self.data.load(self.order.locate(index))
        rng = np.random.default_rng([self.seed, index])
        return cut_window(
            clip,
            rng,
            frames=self.frames,
            height=self.height,
            width=self.width,
            long_prob=self.long_caption_prob,
        )

    def batch(self, indices: Sequence[int]) -> list[Window]:
        return [self.sample(i) for i in indices]


def cut_window(
    clip: LoadedClip, rng: np.random.Generator, *, frames: int, height: int, width: int, long_prob: float
) -> Window:
    """A window of ``frames`` frames of ``clip`` at a start drawn from ``rng``."""
    start = int(rng.integers(clip.frames.shape[0] - frames + 1))
    end = start + frames
    video = torch.from_numpy(np.ascontiguousarray(clip.frames[start:end])).float()
    video = video.permute(0, 3, 1, 2) / 127.5 - 1.0  # (F, 3, H, W)
    h0, w0 = video.shape[-2:]
    if (h0, w0) != (height, width):
        video = F.interpolate(video, size=(height, width), mode="bilinear", antialias=True)
    K = torch.from_numpy(clip.intrinsics[start:end].copy()).float()
    K[:, 0] *= width / w0
    K[:, 1] *= height / h0
    c2w = torch.from_numpy(np.linalg.inv(clip.c2w[start]) @ clip.c2w[start:end]).float()
    captions = clip.meta.captions
    caption = captions.long if rng.random() < long_prob else captions.short
    interaction, onset = clip.meta.interaction, clip.meta.interaction_onset
    imperative = rng.random() < 0.5  # players type imperatives; captions describe: train on both
    if interaction is None or (onset is not None and onset >= end):  # not issued within the window
        return Window(video.permute(1, 0, 2, 3).clamp(-1, 1), K, c2w, caption, None)
    caption = f"{caption} {interaction.text}"
    instruction = interaction.instruction if imperative else interaction.text
    frame = 0 if onset is None else max(0, onset - start)
    return Window(video.permute(1, 0, 2, 3).clamp(-1, 1), K, c2w, caption, instruction, frame)
