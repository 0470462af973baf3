"""Renderer geometry against the exported camera conventions."""

import numpy as np
import pytest

from worldloop.components.synthworld import EventKind, SynthConfig, generate_clip
from worldloop.components.synthworld.render import Renderer
from worldloop.components.synthworld.state import TAG_FLOOR, TAG_WALL, FrameState
from worldloop.components.synthworld.world import generate_world
from worldloop.model.camera.actions import rotation_yaw_pitch

CFG = SynthConfig(size=64, frames=17)


def _state(world, x: float, z: float, yaw: float, pitch: float = 0.0) -> FrameState:
    return FrameState(
        rotation=rotation_yaw_pitch(yaw, pitch),
        position=np.array([x, -CFG.eye_height, z]),
        door_open=np.zeros(len(world.doors)),
    )


def test_floor_depth_matches_the_pinhole_model() -> None:
    world = generate_world(np.random.default_rng(3), CFG.map_cells)
    cx, cz = world.rooms[0].centre
    out = Renderer(world, CFG).render([_state(world, cx, cz, 0.3)])
    K = Renderer(world, CFG).K
    v = np.arange(CFG.size)[:, None].repeat(CFG.size, 1)
    expected = CFG.eye_height * K[1, 1] / (v + 0.5 - K[1, 2])
    floor = out.tags[0] == TAG_FLOOR
    assert floor.sum() > CFG.size * 4
    np.testing.assert_allclose(out.depth[0][floor], expected[floor], rtol=1e-4)
    assert not floor[: CFG.size // 2].any()  # level camera: no floor above the horizon


@pytest.mark.parametrize("pitch", [0.0, 0.4, -0.3])
def test_back_projected_wall_pixels_lie_on_grid_faces(pitch: float) -> None:
    world = generate_world(np.random.default_rng(5), CFG.map_cells)
    cx, cz = world.rooms[1].centre
    renderer = Renderer(world, CFG)
    state = _state(world, cx + 0.23, cz - 0.17, 1.1, pitch)
    out = renderer.render([state])
    wall = out.tags[0] == TAG_WALL
    rays = renderer.rays_cam[wall] @ state.rotation.T
    points = state.position + out.depth[0][wall][:, None] * rays
    off_grid = np.minimum(
        np.abs(points[:, 0] - np.round(points[:, 0])), np.abs(points[:, 2] - np.round(points[:, 2]))
    )
    # Within the angular quantisation of the wall table (a few thousandths of a cell).
    assert np.quantile(off_grid, 0.99) < 0.02
    heights = -points[:, 1]
    assert heights.min() >= -1e-3 and heights.max() <= CFG.wall_height + 1e-3


def test_exported_poses_place_the_door_where_it_is_drawn() -> None:
    clip = generate_clip(CFG, 11, kind=EventKind.open_door, followups=())
    event = clip.event
    assert event is not None and clip.masks is not None
    door = event.door
    base = rotation_yaw_pitch(clip.shot.yaw0, 0.0)
    world_door = np.array(event.point)
    for i in range(CFG.frames):
        # Map pose of frame i composed from the exported (relative) c2w and the start placement.
        rot = base @ clip.c2w[i, :3, :3]
        pos = clip.shot.start + base @ clip.c2w[i, :3, 3]
        cam = rot.T @ (world_door - pos)
        u, v = (clip.intrinsics[i] @ (cam / cam[2]))[:2]
        assert clip.masks[i, int(v), int(u)] or i < event.onset, f"frame {i}: door centre not in its mask"
        if i < event.onset:
            assert not clip.masks[i].any()
    assert door >= 0
