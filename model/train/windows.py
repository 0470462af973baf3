"""Training windows: fixed-length pieces of the clips of a data mixture, resized, camera re-based,
captioned — deterministically (sample ``i`` of a phase is always the same window, so a resumed run
sees exactly the batches an uninterrupted one would, and rank ``r`` reads only its own samples).

Which clip sample ``i`` reads is the mixture's business (:class:`worldloop.data.ClipOrder`); this
module cuts the window out of it and makes the tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worldloop.data import InteractionCaption, LoadedClip, Mixture


@dataclass(frozen=True)
class Turn:
    """One instruction of a window, as a player would issue it."""

    instruction: str  # imperative ("open the door") or descriptive, drawn per turn
    frame: int  # window frame where it is issued (0: at or before the window's start)


@dataclass(frozen=True)
class Window:
    """A training sample: ``frames`` video frames resized to (height, width), camera re-based.

    ``turns`` are the instructions in force over the window, in order: the one issued last before the
    window (frame 0), then each issued inside it. A new turn replaces the previous instruction, as in
    serving. Every model is conditioned on the turn in force where it generates: the bidirectional one
    per latent frame, the causal student per block (:mod:`.objectives.batch`)."""

    video: Tensor  # (3, F, H, W) float32 in [-1, 1]
    intrinsics: Tensor  # (F, 3, 3), scaled to the resized frames
    c2w: Tensor  # (F, 4, 4), c2w[0] = identity
    caption: str  # long or short scene caption, with the turns' interaction captions appended
    turns: tuple[Turn, ...] = ()
    # the scene caption alone: what a model fed the turns reads, as a player's prompt never names the
    # instruction still to come (None: ``caption`` has no interaction appended)
    scene: str | None = None
    # the same window of the clip's counterfactual twin (same shot, no event, no turns), when the
    # sampler pairs them (WindowSampler ``twins``): what the turns alone change
    twin: Window | None = None

    @property
    def prompt(self) -> str:
        """The text beside the turns: the scene caption alone."""
        return self.caption if self.scene is None else self.scene

    @property
    def instruction(self) -> str | None:
        """The window's instructions joined in order, as one text for logs and reports (None without
        any); training conditions on :attr:`turns`, each where it is in force."""
        return ", then ".join(t.instruction for t in self.turns) if self.turns else None

    @property
    def instruction_frame(self) -> int | None:
        """Where the first instruction is issued (None without any)."""
        return self.turns[0].frame if self.turns else None


class WindowSampler:
    """Deterministic windows of ``frames`` frames from the clips of ``data`` (clips shorter than that
    are left out). With ``twins``, a window with turns whose clip has a counterfactual twin in its
    dataset (:meth:`Mixture.twin`) carries the twin's window at the same frames as :attr:`Window.twin`."""

    def __init__(
        self,
        data: Mixture,
        *,
        frames: int,
        height: int,
        width: int,
        seed: int,
        long_caption_prob: float = 0.5,
        twins: bool = False,
    ) -> None:
        self.data, self.order = data, data.order(frames=frames, seed=seed)
        self.frames, self.height, self.width = frames, height, width
        self.seed, self.long_caption_prob, self.twins = seed, long_caption_prob, twins

    def sample(self, index: int) -> Window:
        """Window ``index``: the clip comes from the mixture's order, the start and caption from the seed
        (the twin's window is cut with the same draws: the same frames and caption)."""
        ref = self.order.locate(index)
        clip = self.data.load(ref)
        window = self._cut(clip, index)
        twin_ref = self.data.twin(ref) if self.twins and window.turns else None
        if twin_ref is None:
            return window
        twin = self.data.load(twin_ref)
        if twin.frames.shape != clip.frames.shape:
            raise ValueError(
                f"clip {clip.meta.key} has {clip.frames.shape[0]} frames of {clip.frames.shape[1:3]} and "
                f"its twin {twin.meta.key} {twin.frames.shape[0]} of {twin.frames.shape[1:3]}: a twin is "
                "the same shot; rebuild the dataset"
            )
        return replace(window, twin=self._cut(twin, index))

    def _cut(self, clip: LoadedClip, index: int) -> Window:
        return cut_window(
            clip,
            np.random.default_rng([self.seed, index]),
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
    caption = scene = captions.long if rng.random() < long_prob else captions.short
    video = video.permute(1, 0, 2, 3).clamp(-1, 1)
    issued = [(i, f) for i, f in clip_turns(clip) if f < end]  # turns issued before the window's end
    earlier = [n for n, (_, f) in enumerate(issued) if f <= start]
    in_force = issued[earlier[-1] :] if earlier else issued  # the last one before the start replaces the rest
    turns = []
    for interaction, onset in in_force:
        caption = f"{caption} {interaction.text}"
        imperative = rng.random() < 0.5  # players type imperatives; captions describe: train on both
        text = interaction.instruction if imperative else interaction.text
        turns.append(Turn(text, max(0, onset - start)))
    return Window(video, K, c2w, caption, tuple(turns), scene)


def clip_turns(clip: LoadedClip) -> list[tuple[InteractionCaption, int]]:
    """The clip's instructions in order, with the frame each is issued at: one per event that has a
    caption (a multi-turn SynthWorld clip has several), else the clip's interaction (curated clips; at
    frame 0 when its onset is unknown)."""
    meta = clip.meta
    turns = [(e.interaction, e.onset_frame) for e in meta.events if e.interaction is not None]
    if not turns and meta.interaction is not None:
        turns = [(meta.interaction, meta.interaction_onset or 0)]
    return sorted(turns, key=lambda turn: turn[1])
