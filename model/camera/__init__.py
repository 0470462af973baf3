"""Player actions → camera trajectories → Plücker rays (GameCraft-1 conventions, DESIGN.md §5.2)."""

from worldloop.model.camera.actions import (
    ActionFrame,
    CameraMotion,
    CameraState,
    Key,
    continue_poses,
    integrate_poses,
    parse_action,
    step_camera,
)
from worldloop.model.camera.intrinsics import intrinsics_from_fov
from worldloop.model.camera.plucker import CameraTrack, actions_to_camera, plucker_embedding

__all__ = [
    "ActionFrame",
    "CameraMotion",
    "CameraState",
    "CameraTrack",
    "Key",
    "actions_to_camera",
    "continue_poses",
    "integrate_poses",
    "intrinsics_from_fov",
    "parse_action",
    "plucker_embedding",
    "step_camera",
]
