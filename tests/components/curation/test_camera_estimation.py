"""Camera annotation from frames: exact synthetic cases, SynthWorld accuracy, helpers and input checks."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from worldloop.components.curation.camera_estimation import (
    METHODS,
    CameraEstimate,
    CameraEstimationConfig,
    estimate_camera,
    rotation_error_deg,
    yaw_pitch_deg,
)
from worldloop.components.synthworld import SynthConfig, generate_clip
from worldloop.model.camera import intrinsics_from_fov
from worldloop.model.camera.actions import rotation_yaw_pitch

SIZE = 128
BOX_LO, BOX_HI = np.array([-3.0, -2.0, -3.0]), np.array([3.0, 2.0, 6.0])  # room around the camera


def _texture(seed: int = 0, n: int = 256) -> np.ndarray:
    """Tileable smooth noise (n, n) float32 in [0, 255]: blobs of a few texels, rich in corners."""
    noise = np.random.default_rng(seed).random((n, n)).astype(np.float32)
    tex = cv2.GaussianBlur(np.pad(noise, 8, mode="wrap"), (0, 0), 1.5)[8:-8, 8:-8]  # blurred, still tileable
    return (tex - tex.min()) / (tex.max() - tex.min()) * 255.0


def _render_room(c2w: np.ndarray, size: int = SIZE, fov_deg: float = 90.0) -> np.ndarray:
    """Frames (F, size, size, 3) uint8 of a textured box room seen from poses ``c2w`` (F, 4, 4) with an
    exact pinhole (pixel centres at +0.5) and bilinear texture sampling."""
    K = intrinsics_from_fov(size, size, fov_deg)
    v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # (H, W, 3) camera frame
    tex = _texture()
    frames = []
    for pose in c2w:
        d, o = rays @ pose[:3, :3].T, pose[:3, 3]
        # The camera is inside the box: the hit is the nearest exit through one of the six faces.
        with np.errstate(divide="ignore"):
            t_axis = np.where(d > 0, (BOX_HI - o) / d, np.where(d < 0, (BOX_LO - o) / d, np.inf))
        axis = np.argmin(t_axis, axis=-1)
        p = o + t_axis.min(axis=-1)[..., None] * d
        s = np.choose(axis, [p[..., 2], p[..., 0], p[..., 0]])  # in-face coordinates
        t = np.choose(axis, [p[..., 1], p[..., 2], p[..., 1]])
        face = 2 * axis + (np.take_along_axis(d, axis[..., None], -1)[..., 0] > 0)
        map_x = ((s * 10.0 + face * 37.0) % 256).astype(np.float32)  # 10 texels per world unit
        map_y = ((t * 10.0 + face * 71.0) % 256).astype(np.float32)
        grey = cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        frames.append(np.repeat(np.clip(grey + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=-1))
    return np.stack(frames)


def _poses(yaw_deg: np.ndarray, pitch_deg: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """c2w (F, 4, 4) in the SynthWorld convention: R = R_y(yaw) · R_x(pitch), translation ``positions``."""
    c2w = np.tile(np.eye(4), (len(yaw_deg), 1, 1))
    for i, (yaw, pitch) in enumerate(zip(yaw_deg, pitch_deg, strict=True)):
        c2w[i, :3, :3] = rotation_yaw_pitch(math.radians(yaw), math.radians(pitch))
    c2w[:, :3, 3] = positions
    return c2w


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _check_shapes(est: CameraEstimate, n: int) -> None:
    assert est.intrinsics.shape == (n, 3, 3) and est.intrinsics.dtype == np.float64
    assert est.c2w.shape == (n, 4, 4) and est.c2w.dtype == np.float64
    assert est.inlier_ratio.shape == (n - 1,) and len(est.methods) == n - 1
    assert set(est.methods) <= set(METHODS)
    np.testing.assert_allclose(est.c2w[0], np.eye(4))
    np.testing.assert_allclose(est.c2w[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)))
    # Every rotation block is orthonormal with det +1.
    rot = est.c2w[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.tile(np.eye(3), (n, 1, 1)), atol=1e-9)
    assert 0.0 <= est.confidence <= 1.0


# --------------------------------------------------------------------------- exact synthetic cases


def test_pure_rotation_is_recovered_as_rotation() -> None:
    n = 10
    truth = _poses(2.0 * np.arange(n), 0.3 * np.arange(n), np.zeros((n, 3)))  # turn right, look up
    est = estimate_camera(_render_room(truth))
    _check_shapes(est, n)
    err = rotation_error_deg(est.c2w, truth)
    assert err["yaw"].max() < 0.5 and err["pitch"].max() < 0.5 and err["geodesic"].max() < 0.5
    assert set(est.methods) == {"rotation"}  # no parallax: the homography explains everything
    np.testing.assert_allclose(est.c2w[:, :3, 3], 0.0)  # and no translation is invented
    np.testing.assert_allclose(est.intrinsics, np.tile(intrinsics_from_fov(SIZE, SIZE, 90.0), (n, 1, 1)))
    assert est.confidence > 0.8


def test_walking_and_turning_recovers_yaw_and_heading() -> None:
    n = 10
    yaw = -1.5 * np.arange(n)  # turning left while walking forward
    heading = np.stack([np.sin(np.radians(yaw)), np.zeros(n), np.cos(np.radians(yaw))], 1)
    positions = np.cumsum(0.12 * heading, axis=0) - 0.12 * heading[0]
    truth = _poses(yaw, np.zeros(n), positions)
    est = estimate_camera(_render_room(truth))
    _check_shapes(est, n)
    err = rotation_error_deg(est.c2w, truth)
    # Two-view estimates with parallax are noisier than pure rotations (about 0.05-0.2 deg a pair).
    assert err["yaw"].max() < 0.5 and err["geodesic"].max() < 1.0
    est_yaw, _ = yaw_pitch_deg(est.c2w)
    assert est_yaw[-1] < -12.0  # the sign convention: yaw < 0 turned left
    assert est.methods.count("essential") >= n // 2
    # Monocular scale is unknown: each step gets translation_per_frame, along the right direction.
    steps = np.linalg.norm(np.diff(est.c2w[:, :3, 3], axis=0), axis=1)
    np.testing.assert_allclose(steps[np.array(est.methods) == "essential"], 0.06, rtol=1e-9)
    assert _cosine(est.c2w[-1, :3, 3], truth[-1, :3, 3]) > 0.95


def test_yaw_right_is_positive_in_frames() -> None:
    truth = _poses(np.array([0.0, 3.0, 6.0]), np.zeros(3), np.zeros((3, 3)))
    yaw, pitch = yaw_pitch_deg(estimate_camera(_render_room(truth)).c2w)
    np.testing.assert_allclose(yaw, [0.0, 3.0, 6.0], atol=0.3)
    np.testing.assert_allclose(pitch, 0.0, atol=0.3)


def test_constant_frames_hold_with_identity_poses() -> None:
    frames = np.full((5, 64, 64, 3), 90, np.uint8)
    est = estimate_camera(frames)
    _check_shapes(est, 5)
    assert est.methods == ("hold",) * 4
    assert np.isnan(est.inlier_ratio).all()
    np.testing.assert_allclose(est.c2w, np.tile(np.eye(4), (5, 1, 1)))
    assert est.confidence == 0.0


def test_single_frame_is_the_identity() -> None:
    est = estimate_camera(np.zeros((1, 32, 48, 3), np.uint8))
    _check_shapes(est, 1)
    assert est.methods == () and est.confidence == 1.0
    np.testing.assert_allclose(est.intrinsics[0], intrinsics_from_fov(48, 32, 90.0))


def test_assumed_fov_sets_the_intrinsics() -> None:
    est = estimate_camera(np.zeros((2, 32, 32, 3), np.uint8), CameraEstimationConfig(fov_deg=60.0))
    np.testing.assert_allclose(est.intrinsics[1], intrinsics_from_fov(32, 32, 60.0))


# --------------------------------------------------------------------------- SynthWorld accuracy


@pytest.fixture(scope="module")
def synthworld_runs() -> list[tuple[np.ndarray, CameraEstimate]]:
    """(true c2w, estimate) of SynthWorld clips 0..3 at 128 px, 33 frames (events included)."""
    runs = []
    for seed in range(4):
        clip = generate_clip(SynthConfig(size=SIZE, frames=33), seed)
        runs.append((clip.c2w, estimate_camera(clip.frames)))
    return runs


def test_synthworld_median_yaw_error_below_two_degrees(
    synthworld_runs: list[tuple[np.ndarray, CameraEstimate]],
) -> None:
    yaw_err = np.concatenate(
        [rotation_error_deg(est.c2w, truth)["yaw"][1:] for truth, est in synthworld_runs]
    )
    assert np.median(yaw_err) < 2.0, f"median yaw error {np.median(yaw_err):.2f} deg"
    for _, est in synthworld_runs:
        _check_shapes(est, 33)
        assert est.methods.count("hold") <= 2


def test_synthworld_walk_forward_translation_points_ahead(
    synthworld_runs: list[tuple[np.ndarray, CameraEstimate]],
) -> None:
    checked = 0
    for truth, est in synthworld_runs:
        t_true = truth[-1, :3, 3]
        if np.linalg.norm(t_true) > 0.5 and t_true[2] > 0.8 * np.linalg.norm(t_true):  # mostly W
            t_est = est.c2w[-1, :3, 3]
            assert t_est[2] > 0.8 * np.linalg.norm(t_est)  # along +z of frame 0, as the truth
            assert _cosine(t_est, t_true) > 0.9
            checked += 1
    assert checked >= 2


# --------------------------------------------------------------------------- helpers


def test_yaw_pitch_deg_inverts_rotation_yaw_pitch() -> None:
    rng = np.random.default_rng(0)
    yaw, pitch = rng.uniform(-179.0, 179.0, 50), rng.uniform(-85.0, 85.0, 50)
    got_yaw, got_pitch = yaw_pitch_deg(_poses(yaw, pitch, np.zeros((50, 3))))
    np.testing.assert_allclose(got_yaw, yaw, atol=1e-9)
    np.testing.assert_allclose(got_pitch, pitch, atol=1e-9)
    # (F, 3, 3) rotations are accepted as well.
    np.testing.assert_allclose(yaw_pitch_deg(_poses(yaw, pitch, np.zeros((50, 3)))[:, :3, :3])[0], yaw)


def test_rotation_error_wraps_yaw() -> None:
    a = _poses(np.array([359.0, 10.0, -170.0]), np.array([0.0, 5.0, 0.0]), np.zeros((3, 3)))
    b = _poses(np.array([1.0, 10.0, 175.0]), np.array([0.0, 2.0, 0.0]), np.zeros((3, 3)))
    err = rotation_error_deg(a, b)
    np.testing.assert_allclose(err["yaw"], [2.0, 0.0, 15.0], atol=1e-9)
    np.testing.assert_allclose(err["pitch"], [0.0, 3.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(err["geodesic"], [2.0, 3.0, 15.0], atol=1e-6)


def test_rotation_error_rejects_mismatched_tracks() -> None:
    with pytest.raises(ValueError, match="frames"):
        rotation_error_deg(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(4), (2, 1, 1)))
    with pytest.raises(ValueError, match="shape"):
        rotation_error_deg(np.eye(4), np.eye(4))


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((32, 32, 3), np.uint8), "shape"),
        (np.zeros((2, 32, 32), np.uint8), "shape"),
        (np.zeros((2, 32, 32, 4), np.uint8), "shape"),
        (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
        (np.zeros((2, 8, 32, 3), np.uint8), "16x16"),
    ],
)
def test_bad_frames_raise_value_error(frames: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate_camera(frames)


def test_frames_must_be_an_array() -> None:
    with pytest.raises(ValueError, match="numpy array"):
        estimate_camera([[0]])  # type: ignore[arg-type]


def test_config_is_frozen_and_strict() -> None:
    cfg = CameraEstimationConfig()
    assert cfg.fov_deg == 90.0 and cfg.min_inliers == 12 and cfg.translation_per_frame == 0.06
    with pytest.raises(ValidationError):
        CameraEstimationConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        cfg.fov_deg = 60.0  # type: ignore[misc]
    for name, field in CameraEstimationConfig.model_fields.items():
        assert field.description, f"{name} has no description"
