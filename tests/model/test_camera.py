import math

import numpy as np
import pytest

from worldloop.model.camera import (
    ActionFrame,
    CameraMotion,
    Key,
    integrate_poses,
    intrinsics_from_fov,
    parse_action,
)

MOTION = CameraMotion()


def hold(action: str, frames: int = 10, **mouse: float) -> np.ndarray:
    return integrate_poses([ActionFrame()] + [parse_action(action, **mouse)] * frames, MOTION)


def test_frame_zero_is_identity_and_rotations_are_proper() -> None:
    poses = integrate_poses([parse_action("w+d", mouse_dx=3, mouse_dy=-2)] * 12)
    np.testing.assert_array_equal(poses[0], np.eye(4))
    for pose in poses:
        rot = pose[:3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("action", "direction"),
    [("w", (0, 0, 1)), ("s", (0, 0, -1)), ("d", (1, 0, 0)), ("a", (-1, 0, 0))],
)
def test_translation_keys_follow_opencv_axes(action: str, direction: tuple[int, int, int]) -> None:
    poses = hold(action)
    np.testing.assert_allclose(poses[-1, :3, 3], np.array(direction) * 10 * MOTION.move_per_frame, atol=1e-12)
    np.testing.assert_allclose(poses[-1, :3, :3], np.eye(3))


def test_combined_keys_compose_at_constant_speed() -> None:
    step = np.diff(hold("w+a", 2)[:, :3, 3], axis=0)[-1]
    assert np.linalg.norm(step) == pytest.approx(MOTION.move_per_frame)
    np.testing.assert_allclose(step / np.linalg.norm(step), np.array([-1, 0, 1]) / math.sqrt(2))
    np.testing.assert_allclose(hold("w+s")[-1, :3, 3], 0.0)


def test_mouse_dx_turns_right_and_w_follows_the_new_heading() -> None:
    poses = hold("w", 9, mouse_dx=10.0)  # 90 degrees in total
    forward = poses[-1, :3, 2]
    np.testing.assert_allclose(forward, [1.0, 0.0, 0.0], atol=1e-12)
    yaw_steps = [math.degrees(math.atan2(p[0, 2], p[2, 2])) for p in poses]
    np.testing.assert_allclose(np.diff(yaw_steps), 10.0, atol=1e-9)
    assert poses[-1, 0, 3] > 0 and poses[-1, 2, 3] > 0  # walked forward while turning right


def test_mouse_dy_looks_down_and_pitch_is_clamped() -> None:
    down = hold("none", 3, mouse_dy=5.0)
    assert down[-1, 1, 2] > 0  # camera +z tilts towards +y (down)
    clamped = hold("none", 40, mouse_dy=-5.0)
    pitch = math.degrees(math.asin(-clamped[-1, 1, 2]))
    assert pitch == pytest.approx(MOTION.max_pitch_deg)


def test_w_ignores_pitch_and_space_lifts_then_settles() -> None:
    looking_down = integrate_poses(
        [ActionFrame()] + [parse_action("none", mouse_dy=4.0)] * 5 + [parse_action("w")] * 5
    )
    assert looking_down[-1, 1, 3] == pytest.approx(0.0)  # walking, not flying into the floor
    track = [ActionFrame()] + [parse_action("space")] * 20 + [parse_action("none")] * 20
    poses = integrate_poses(track, MOTION)
    heights = -poses[:, 1, 3]
    assert heights.max() == pytest.approx(MOTION.max_rise)
    assert heights[-1] == pytest.approx(0.0)


def test_parse_action_round_trip_and_errors() -> None:
    action = parse_action("space+W+a")
    assert action.keys == {Key.W, Key.A, Key.SPACE}
    assert action.label() == "w+a+space"
    assert parse_action("none").keys == frozenset()
    with pytest.raises(ValueError, match="unknown key"):
        parse_action("w+jump")


def test_intrinsics_centre_pixel_ray() -> None:
    K = intrinsics_from_fov(64, 48, 90.0)
    assert K[0, 0] == pytest.approx(32.0) and K[0, 2] == 32.0 and K[1, 2] == 24.0
    # The right edge of the image is 45 degrees off axis at 90 degrees of horizontal FOV.
    ray = np.linalg.inv(K) @ np.array([64.0, 24.0, 1.0])
    assert math.degrees(math.atan2(ray[0], ray[2])) == pytest.approx(45.0)
    with pytest.raises(ValueError, match="fov"):
        intrinsics_from_fov(64, 64, 0.0)
