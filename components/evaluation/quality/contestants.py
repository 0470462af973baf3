"""What the ladder measures side by side: the model, its two baselines and the truth.

* ``model`` — the stack the URI names, sampled with the chosen :class:`~.generate.Sampler`;
* ``random`` — the same spec with random weights (world model and VAE), sampled the same way;
* ``frozen`` — the true first frame repeated: no model at all (no VAE either, so no reconstruction);
* ``plane`` — for a model with ``i2v_warp`` (``still`` with ``i2v_still`` alone): the I2V latent it
  reads for each frame — the reference seen from the commanded camera through its plane — decoded by
  its VAE. No world model: what the experts add over their own geometric input;
* ``truth`` — SynthWorld's own render of the same first frame and actions: the ceiling of every
  measure that goes through the camera estimator or the InterBench judge (their own error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from worldloop.components.evaluation.interbench import generate_case
from worldloop.components.evaluation.quality.generate import (
    TEACHER_STEPS,
    Sampler,
    plane_video,
    rollout_video,
    teacher_video,
    vae_reconstruction,
)
from worldloop.components.evaluation.quality.heldout import HeldOutClip, HeldOutSet
from worldloop.components.evaluation.suite import InterBenchCase, LoadedSuite
from worldloop.model.camera.actions import ActionFrame
from worldloop.platform.stack import ModelStack


class Contestant(Protocol):
    """A source of videos for the ladder's measures."""

    name: str

    def video(
        self, held: HeldOutSet, clip: HeldOutClip, actions: Sequence[ActionFrame], *, seed: int
    ) -> np.ndarray:
        """(F, H, W, 3) uint8 from ``clip``'s first frame under ``actions`` (one per frame)."""
        ...

    def reconstruct(self, frames: np.ndarray) -> np.ndarray | None:
        """The VAE's encode → decode of ``frames``; None when the contestant has no VAE."""
        ...

    def interbench_video(self, suite: LoadedSuite, case: InterBenchCase, *, seed: int) -> np.ndarray:
        """(F, H, W, 3) uint8 for an InterBench case (image, prompt, actions, instruction)."""
        ...


@dataclass
class ModelContestant:
    """A model stack sampled with ``sampler``. InterBench always streams with the serving rollout (an
    instruction arrives mid-stream and recaches): for a teacher those six scores are of its causal use."""

    name: str
    stack: ModelStack
    sampler: Sampler
    fov_deg: float  # field of view of the held-out data (the teacher's camera rays)
    teacher_steps: int = TEACHER_STEPS

    def video(
        self, held: HeldOutSet, clip: HeldOutClip, actions: Sequence[ActionFrame], *, seed: int
    ) -> np.ndarray:
        image = clip.frames[0]
        if self.sampler is Sampler.teacher:
            return teacher_video(
                self.stack,
                image,
                actions,
                prompt=clip.prompt,
                seed=seed,
                fov_deg=self.fov_deg,
                steps=self.teacher_steps,
            )
        return rollout_video(self.stack, image, actions, prompt=clip.prompt, seed=seed)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray | None:
        return vae_reconstruction(self.stack, frames)

    def interbench_video(self, suite: LoadedSuite, case: InterBenchCase, *, seed: int) -> np.ndarray:
        return generate_case(self.stack, suite, case, seed=seed)


@dataclass
class FrozenContestant:
    """The true first frame repeated for every frame."""

    name: str = "frozen"

    def video(
        self, held: HeldOutSet, clip: HeldOutClip, actions: Sequence[ActionFrame], *, seed: int
    ) -> np.ndarray:
        return np.repeat(clip.frames[:1], len(actions), axis=0)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray | None:
        return None

    def interbench_video(self, suite: LoadedSuite, case: InterBenchCase, *, seed: int) -> np.ndarray:
        return np.repeat(suite.image(case.id)[None], case.frames, axis=0)


INPUTS = ("plane", "still")  # the decoded I2V input's name: warped through the plane, or held still


@dataclass
class PlaneContestant:
    """The model's I2V latent of each frame, decoded (:func:`~.generate.plane_video`)."""

    stack: ModelStack
    fov_deg: float  # field of view of the held-out data (the camera rays)
    name: str = "plane"

    def video(
        self, held: HeldOutSet, clip: HeldOutClip, actions: Sequence[ActionFrame], *, seed: int
    ) -> np.ndarray:
        return plane_video(self.stack, clip.frames[0], actions, fov_deg=self.fov_deg)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray | None:
        return None

    def interbench_video(self, suite: LoadedSuite, case: InterBenchCase, *, seed: int) -> np.ndarray:
        actions = case.action_frames()
        stride = self.stack.model.cfg.vae.temporal_stride
        actions += [actions[-1]] * (-(len(actions) - 1) % stride)  # whole latent frames: hold the last
        return plane_video(self.stack, suite.image(case.id), actions, fov_deg=self.fov_deg)[: case.frames]


@dataclass
class TruthContestant:
    """SynthWorld's render of the same start and actions (the held-out clip itself for its own actions)."""

    name: str = "truth"

    def video(
        self, held: HeldOutSet, clip: HeldOutClip, actions: Sequence[ActionFrame], *, seed: int
    ) -> np.ndarray:
        if tuple(actions) == clip.actions:
            return clip.frames
        return held.render(clip, actions)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray | None:
        return None

    def interbench_video(self, suite: LoadedSuite, case: InterBenchCase, *, seed: int) -> np.ndarray:
        return suite.truth(case.id).event
