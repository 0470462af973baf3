"""Held-out SynthWorld for the quality ladder: clips of worlds no training run has seen, at the model's
size and length, and re-renders of their start under chosen actions (the true W-vs-S clips).

Training renders SynthWorld with small seeds (0–7 today; ``worldloop synth --seed``), and InterBench's
SynthWorld judge measures its own accuracy on seed 11 (:data:`interbench.HELD_OUT_SEED`). The ladder
uses :data:`HELD_OUT_SEED`, far from both. Its clips have **no interaction event**: the ladder measures
how well a model follows the camera and keeps the scene from the clip's own first frame and actions;
instructions are measured separately by the InterBench part (its own held-out suite).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from worldloop.components.synthworld import SynthConfig, generate_clip
from worldloop.components.synthworld.clip import render_shot
from worldloop.components.synthworld.director import Shot
from worldloop.components.synthworld.world import WorldMap
from worldloop.components.synthworld.writer import clip_seed
from worldloop.model.camera.actions import ActionFrame, integrate_poses, parse_action
from worldloop.model.spec import ModelSpec

# Never a training seed. Also < 2³² / 1_000_003, so the InterBench suite's case seeds
# (seed·1_000_003 + case, see suite.build_synthworld_suite) stay 32-bit.
HELD_OUT_SEED = 1000
MAX_RENDER_SIZE = 512  # SynthConfig's largest square frame


@dataclass(frozen=True)
class HeldOutClip:
    """One held-out clip at the model's size: truth frames, the actions that made them, their poses."""

    index: int
    seed: int  # the clip's SynthWorld seed (clip_seed(HELD_OUT_SEED, index))
    frames: np.ndarray  # (F, H, W, 3) uint8, the truth
    actions: tuple[ActionFrame, ...]  # (F,): actions[i] produces frame i; actions[0] is ignored
    c2w: np.ndarray  # (F, 4, 4) float64, OpenCV, frame 0 = identity: the commanded path
    prompt: str  # the short scene caption (what InterBench gives as the prompt)
    world: WorldMap
    shot: Shot


@dataclass(frozen=True)
class HeldOutSet:
    """``clips`` held-out clips of ``1 + blocks · frames_per_block`` frames at ``height × width``."""

    seed: int
    cfg: SynthConfig  # how they were rendered (square; resized to height × width when it differs)
    height: int
    width: int
    blocks: int
    frames_per_block: int
    clips: tuple[HeldOutClip, ...]

    @property
    def frames(self) -> int:
        return 1 + self.blocks * self.frames_per_block

    def resize(self, frames: np.ndarray) -> np.ndarray:
        """Rendered square frames (F, S, S, 3) → (F, height, width, 3) (area resampling)."""
        if frames.shape[1:3] == (self.height, self.width):
            return frames
        return np.stack(
            [cv2.resize(f, (self.width, self.height), interpolation=cv2.INTER_AREA) for f in frames]
        )

    def render(self, clip: HeldOutClip, actions: Sequence[ActionFrame]) -> np.ndarray:
        """What SynthWorld shows from ``clip``'s first frame under ``actions`` (no event): (F, H, W, 3)."""
        acts = list(actions)
        if len(acts) != self.cfg.frames:
            raise ValueError(f"need {self.cfg.frames} actions (one per frame), got {len(acts)}")
        shot = replace(clip.shot, actions=acts, c2w=integrate_poses(acts, self.cfg.motion), event=None)
        frames, _ = render_shot(clip.world, shot, self.cfg, clip.seed)
        return self.resize(frames)


def frames_per_block(spec: ModelSpec) -> int:
    """Video frames one causal block generates (latent block frames × the VAE's temporal stride)."""
    return spec.model.causal.block_frames * spec.model.vae.temporal_stride


def render_size(height: int, width: int) -> int:
    """The square SynthWorld size rendered for a ``height × width`` model: its larger side (even,
    at most 512), resized afterwards. Geometry is exact only for square models (tiny: 64 × 64)."""
    side = min(max(height, width), MAX_RENDER_SIZE)
    return side + side % 2


def held_out_set(spec: ModelSpec, *, clips: int, blocks: int, seed: int = HELD_OUT_SEED) -> HeldOutSet:
    """Render ``clips`` event-free held-out clips of ``1 + blocks · frames_per_block`` frames.

    The camera speeds are the model's (``spec.model.motion``) so the commanded path of the actions is
    exactly the path the truth was rendered along. Deterministic in its arguments.
    """
    if clips < 1 or blocks < 1:
        raise ValueError(f"--clips and --blocks must be ≥ 1, got {clips} and {blocks}")
    per_block = frames_per_block(spec)
    cfg = SynthConfig(
        size=render_size(spec.height, spec.width), frames=1 + blocks * per_block, motion=spec.model.motion
    )
    out = HeldOutSet(seed, cfg, spec.height, spec.width, blocks, per_block, ())
    rendered = []
    for i in range(clips):
        s = clip_seed(seed, i)
        clip = generate_clip(cfg, s, any_event=False)
        rendered.append(
            HeldOutClip(
                index=i,
                seed=s,
                frames=out.resize(clip.frames),
                actions=tuple(clip.shot.actions),
                c2w=np.asarray(clip.c2w, np.float64),
                prompt=clip.captions.short,
                world=clip.world,
                shot=clip.shot,
            )
        )
    return replace(out, clips=tuple(rendered))


# -- direction checks: pairs of opposite held inputs -------------------------------------------------------
MOUSE_DX = 2.0  # mouse units per frame for the yaw pair (2°/frame at the default CameraMotion)


@dataclass(frozen=True)
class DirectionPair:
    """Two opposite inputs held from the same first frame, and what the camera must do under each.

    ``axis``: ``forward`` (translation along the frame-0 camera's z), ``lateral`` (along its x, right
    positive) or ``yaw`` (turn, right positive, degrees). ``sign``: the sign the first input must give
    on that axis; the second must give the opposite.
    """

    name: str
    first: ActionFrame
    second: ActionFrame
    axis: str
    sign: int

    def script(self, which: ActionFrame, frames: int) -> list[ActionFrame]:
        """Frame 0 still, then ``which`` held for every later frame."""
        return [ActionFrame(), *[which] * (frames - 1)]


DIRECTION_PAIRS: tuple[DirectionPair, ...] = (
    DirectionPair("w_vs_s", parse_action("w"), parse_action("s"), axis="forward", sign=+1),
    DirectionPair("a_vs_d", parse_action("a"), parse_action("d"), axis="lateral", sign=-1),
    DirectionPair(
        "mouse_left_vs_right",
        parse_action("none", mouse_dx=-MOUSE_DX),
        parse_action("none", mouse_dx=MOUSE_DX),
        axis="yaw",
        sign=-1,
    ),
)
