"""Plücker rays against an independent per-pixel formula; actions → camera conventions."""

from __future__ import annotations

import math

import numpy as np
import torch

from worldloop.model import actions_to_camera, plucker_embedding
from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.camera import CameraState, integrate_poses, parse_action


def _reference_rays(k: np.ndarray, c2w: np.ndarray, height: int, width: int) -> np.ndarray:
    """Textbook construction, one pixel at a time: back-project the pixel centre, rotate, normalise."""
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    out = np.zeros((6, height, width))
    origin = c2w[:3, 3]
    for v in range(height):
        for u in range(width):
            ray_cam = np.array([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1.0])
            d = c2w[:3, :3] @ ray_cam
            d /= math.sqrt(float(d @ d))
            out[:3, v, u] = np.cross(origin, d)
            out[3:, v, u] = d
    return out


def test_plucker_matches_independent_formula() -> None:
    actions = [parse_action("w+a", mouse_dx=3.0, mouse_dy=-2.0)] * 5 + [parse_action("space")] * 3
    track = actions_to_camera(actions, width=12, height=8, fov_deg=70.0)
    rays = plucker_embedding(track.intrinsics, track.c2w, 8, 12)
    assert rays.shape == (8, 6, 8, 12)
    for f in (0, 4, 7):
        ref = _reference_rays(track.intrinsics[f].double().numpy(), track.c2w[f].double().numpy(), 8, 12)
        np.testing.assert_allclose(rays[f].numpy(), ref, atol=1e-5)


def test_first_frame_is_the_origin_and_directions_are_unit() -> None:
    track = actions_to_camera([parse_action("w")] * 9, width=16, height=16)
    assert torch.equal(track.c2w[0], torch.eye(4))
    rays = plucker_embedding(track.intrinsics, track.c2w, 16, 16)
    assert torch.count_nonzero(rays[0, :3]) == 0  # o = 0 ⇒ moment o × d = 0
    torch.testing.assert_close(rays[:, 3:].norm(dim=1), torch.ones(9, 16, 16))
    # the centre ray of an unrotated camera points along +z
    centre = rays[0, 3:, 7:9, 7:9].mean(dim=(1, 2))
    torch.testing.assert_close(centre / centre.norm(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    # holding W moves along +z
    assert track.c2w[-1, 2, 3] > 0 and abs(float(track.c2w[-1, 0, 3])) < 1e-6


def test_streaming_camera_continues_the_same_trajectory() -> None:
    actions = [parse_action("w", mouse_dx=2.0)] * 4 + [parse_action("d+space", mouse_dy=1.0)] * 8
    whole = torch.from_numpy(integrate_poses(actions)).float()
    first = actions_to_camera(actions[:4], width=8, height=8)
    second = actions_to_camera(actions[4:], width=8, height=8, start=first.end)
    torch.testing.assert_close(torch.cat([first.c2w, second.c2w]), whole)
    assert isinstance(second.end, CameraState)


def test_group_plucker_repeats_frame_zero() -> None:
    rays = torch.randn(1, 9, 6, 8, 8)
    grouped = group_plucker(rays, temporal_stride=4)
    assert grouped.shape == (1, 3, 24, 8, 8)
    assert torch.equal(grouped[0, 0, :6], rays[0, 0]) and torch.equal(grouped[0, 0, 18:], rays[0, 0])
    assert torch.equal(grouped[0, 2, 18:], rays[0, 8])
