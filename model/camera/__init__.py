"""Player actions → camera trajectories (GameCraft-1 conventions, DESIGN.md §5.2)."""

from worldloop.model.camera.actions import (
    ActionFrame,
    CameraMotion,
    Key,
    integrate_poses,
    parse_action,
)
from worldloop.model.camera.intrinsics import intrinsics_from_fov

__all__ = [
    "ActionFrame",
    "CameraMotion",
    "Key",
    "integrate_poses",
    "intrinsics_from_fov",
    "parse_action",
]
