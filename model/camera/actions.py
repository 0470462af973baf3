"""Keyboard/mouse actions and their camera kinematics.

Conventions (OpenCV, as in GameCraft-1): camera x right, y down, z forward. The world frame is the
camera frame of frame 0, so ``c2w[0]`` is the identity and every pose is relative to it.

* W/S move along the horizontal heading (FPS style: pitch does not make W fly), A/D strafe along the
  camera's x axis; combined keys add up and the diagonal is normalised to the same speed.
* space lifts the camera (−y) up to ``max_rise``; without space it settles back at ``settle`` speed.
* mouse ``dx`` > 0 turns right (yaw about +y, which points down), ``dy`` > 0 looks down (screen y).
* ``actions[i]`` is the input that produces frame ``i``; ``actions[0]`` leaves frame 0 at the origin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worldloop.controls import Key as Key  # the key vocabulary lives below the model (the SDK speaks it)


class ActionFrame(BaseModel):
    """The input held during one frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: frozenset[Key] = Field(frozenset(), description="Keys held during this frame.")
    mouse_dx: float = Field(0.0, description="Horizontal mouse motion, in mouse units (>0: right).")
    mouse_dy: float = Field(0.0, description="Vertical mouse motion, in mouse units (>0: down).")

    def label(self) -> str:
        """Compact text form, e.g. ``w+a`` or ``none``; inverse of :func:`parse_action`."""
        order = [k for k in Key if k in self.keys]
        return "+".join(k.value for k in order) or "none"


def parse_action(text: str, *, mouse_dx: float = 0.0, mouse_dy: float = 0.0) -> ActionFrame:
    """Parse ``"w+a"``, ``"space"``, ``"none"``/``""`` into an :class:`ActionFrame`."""
    names = [p.strip().lower() for p in text.split("+") if p.strip()]
    if names == ["none"]:
        names = []
    valid = {k.value for k in Key}
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in action {text!r}; use {sorted(valid)} joined by '+'")
    return ActionFrame(keys=frozenset(Key(n) for n in names), mouse_dx=mouse_dx, mouse_dy=mouse_dy)


class CameraMotion(BaseModel):
    """Speeds of the action → camera mapping (per frame)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    move_per_frame: float = Field(0.06, gt=0, description="W/A/S/D translation, world units per frame.")
    rise_per_frame: float = Field(0.05, gt=0, description="space lift speed, world units per frame.")
    settle_per_frame: float = Field(0.05, gt=0, description="Fall speed when space is released.")
    max_rise: float = Field(0.35, ge=0, description="Highest lift above the start height.")
    degrees_per_mouse_unit: float = Field(1.0, gt=0, description="Rotation per mouse unit (degrees).")
    max_pitch_deg: float = Field(60.0, gt=0, lt=90, description="Pitch is clamped to ±this.")


def rotation_yaw_pitch(yaw: float, pitch: float) -> np.ndarray:
    """R = R_y(yaw) · R_x(pitch) in radians; yaw > 0 turns right, pitch > 0 looks up (−y)."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return r_yaw @ r_pitch


@dataclass(frozen=True)
class CameraState:
    """Where the camera is after some frames: enough to continue a stream without its history."""

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw: float = 0.0  # radians, > 0 turned right
    pitch: float = 0.0  # radians, > 0 looking up
    rise: float = 0.0  # lift above the start height (world units)

    def pose(self) -> np.ndarray:
        """Camera-to-world (4, 4) float64."""
        pose = np.eye(4)
        pose[:3, :3] = rotation_yaw_pitch(self.yaw, self.pitch)
        pose[:3, 3] = self.position
        return pose


def step_camera(state: CameraState, act: ActionFrame, motion: CameraMotion) -> CameraState:
    """Apply one frame of input to ``state``."""
    yaw = state.yaw + math.radians(act.mouse_dx * motion.degrees_per_mouse_unit)
    max_pitch = math.radians(motion.max_pitch_deg)
    pitch = state.pitch - math.radians(act.mouse_dy * motion.degrees_per_mouse_unit)
    pitch = min(max(pitch, -max_pitch), max_pitch)
    # Heading and strafe axes in the horizontal plane (columns of R_y(yaw)).
    forward = np.array([math.sin(yaw), 0.0, math.cos(yaw)])
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    step = (int(Key.W in act.keys) - int(Key.S in act.keys)) * forward
    step = step + (int(Key.D in act.keys) - int(Key.A in act.keys)) * right
    position = np.array(state.position, dtype=np.float64)
    norm = float(np.linalg.norm(step))
    if norm > 0:
        position += motion.move_per_frame * step / norm
    if Key.SPACE in act.keys:
        rise = min(state.rise + motion.rise_per_frame, motion.max_rise)
    else:
        rise = max(state.rise - motion.settle_per_frame, 0.0)
    position[1] = -rise  # y points down: lifting is −y
    return CameraState(
        position=(float(position[0]), float(position[1]), float(position[2])), yaw=yaw, pitch=pitch, rise=rise
    )


def integrate_poses(actions: Sequence[ActionFrame], motion: CameraMotion | None = None) -> np.ndarray:
    """Camera-to-world poses (F, 4, 4), float64, for an action track of F frames."""
    poses, _ = continue_poses(actions, CameraState(), motion=motion, first_is_origin=True)
    return poses


def continue_poses(
    actions: Sequence[ActionFrame],
    state: CameraState,
    *,
    motion: CameraMotion | None = None,
    first_is_origin: bool = False,
) -> tuple[np.ndarray, CameraState]:
    """Poses (F, 4, 4) for ``actions`` continuing from ``state``, and the state after the last frame.

    With ``first_is_origin`` the first action is ignored and frame 0 sits at ``state`` (a new stream).
    """
    motion = motion or CameraMotion()
    poses = np.tile(np.eye(4), (len(actions), 1, 1))
    for i, act in enumerate(actions):
        if not (first_is_origin and i == 0):
            state = step_camera(state, act, motion)
        poses[i] = state.pose()
    return poses, state
