"""The still latent seen from each frame's camera through a plane (``ModelConfig.i2v_warp``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldloop.model import WorldModel, actions_to_camera, plucker_embedding, tiny
from worldloop.model.arch.camera_encoder import group_plucker
from worldloop.model.arch.warp import plane_grid, warp_condition, warp_image, warped_stills
from worldloop.model.arch.world_model import i2v_condition
from worldloop.model.camera import parse_action
from worldloop.model.camera.actions import rotation_yaw_pitch
from worldloop.model.camera.intrinsics import intrinsics_from_fov
from worldloop.model.camera.plucker import pose_from_plucker
from worldloop.model.config import ModelConfig

SIZE, STRIDE, LATENT = 32, 4, 8  # 32 px video, 8 px latent (spatial stride 4 here)


def _camera(action: str, *, dx: float = 0.0, frames: int = 9, fov: float = 90.0) -> torch.Tensor:
    acts = [parse_action("none")] + [parse_action(action, mouse_dx=dx)] * (frames - 1)
    track = actions_to_camera(acts, width=SIZE, height=SIZE, fov_deg=fov)
    return group_plucker(
        plucker_embedding(track.intrinsics, track.c2w, SIZE, SIZE)[None], temporal_stride=STRIDE
    )


@pytest.mark.parametrize(
    ("height", "width", "fov", "pool"), [(16, 16, 90.0, 1), (24, 40, 60.0, 8), (48, 32, 100.0, 4)]
)
def test_pose_from_plucker_inverts_the_embedding(height: int, width: int, fov: float, pool: int) -> None:
    """Exact on every pixel's rays and on rays averaged over pool × pool blocks (what the warp reads)."""
    rng = np.random.default_rng(height + width)
    c2w = torch.eye(4).repeat(6, 1, 1)
    for i in range(6):
        c2w[i, :3, :3] = torch.from_numpy(rotation_yaw_pitch(rng.uniform(-3, 3), rng.uniform(-1.2, 1.2)))
        c2w[i, :3, 3] = torch.from_numpy(rng.normal(0, 3, 3))
    k = torch.from_numpy(intrinsics_from_fov(width, height, fov)).float().expand(6, 3, 3)
    rays = torch.nn.functional.avg_pool2d(plucker_embedding(k, c2w, height, width), pool)
    rotation, origin = pose_from_plucker(rays)
    torch.testing.assert_close(rotation, c2w[:, :3, :3], atol=5e-5, rtol=0)
    torch.testing.assert_close(origin, c2w[:, :3, 3], atol=5e-4, rtol=0)
    with pytest.raises(ValueError, match="N, 6, H, W"):
        pose_from_plucker(torch.zeros(2, 5, 4, 4))


def _grid(camera: torch.Tensor, depth: float = 3.0) -> torch.Tensor:
    return plane_grid(camera, temporal_stride=STRIDE, latent_size=(LATENT, LATENT), depth=depth)


def _centres() -> torch.Tensor:
    c = (torch.arange(LATENT) + 0.5) / LATENT * 2 - 1
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def test_a_still_camera_samples_every_latent_pixel_at_itself() -> None:
    grid = _grid(_camera("none"))
    torch.testing.assert_close(grid, _centres().expand_as(grid), atol=2e-2, rtol=0)


def test_a_turn_slides_the_reference_by_the_homography() -> None:
    """Turning right by θ: a pixel at x sees the reference at tan(atan(x·t) + θ)/t (t = tan(fov/2))."""
    grid = _grid(_camera("none", dx=3.0))  # 3° per frame: latent frame 1 ends 12° right
    t = math.tan(math.radians(45.0))
    for frame, angle in ((1, 12.0), (2, 24.0)):
        x = _centres()[..., 0]
        expected = torch.tan(torch.atan(x * t) + math.radians(angle)) / t
        torch.testing.assert_close(grid[frame, ..., 0], expected, atol=3e-2, rtol=0)
        assert (grid[frame, ..., 0] > x).all()  # the view moved right: everything samples further right


def test_moving_forward_zooms_in_and_back_zooms_out() -> None:
    forward, back = _grid(_camera("w")), _grid(_camera("s"))
    centres = _centres()
    # W: every latent pixel samples nearer the centre (the plane comes closer); S: further out.
    assert (forward[2].norm(dim=-1) < centres.norm(dim=-1)).all()
    assert (back[2].norm(dim=-1) > centres.norm(dim=-1)).all()
    # 8 frames at 0.06 units towards a plane 3 units away: magnified by 3 / (3 − 0.48)
    torch.testing.assert_close(forward[2], centres * (3 - 0.48) / 3, atol=2e-2, rtol=0)


def test_strafing_slides_sideways() -> None:
    left, right = _grid(_camera("a")), _grid(_camera("d"))
    x = _centres()[..., 0]
    assert (left[2, ..., 0] < x).all() and (right[2, ..., 0] > x).all()


def test_warp_keeps_the_reference_frame_and_zeroes_the_unseen() -> None:
    torch.manual_seed(0)
    reference, still = torch.randn(1, 4, 1, LATENT, LATENT), torch.randn(1, 4, 1, LATENT, LATENT)
    cond = i2v_condition(reference, num_frames=3, temporal_stride=STRIDE, still=still)
    warped = warp_condition(cond, _camera("none", dx=6.0), temporal_stride=STRIDE, depth=3.0)
    torch.testing.assert_close(warped[:, : STRIDE + 4, 0], cond[:, : STRIDE + 4, 0])  # reference kept
    torch.testing.assert_close(warped[:, :STRIDE], cond[:, :STRIDE])  # masks untouched
    # 48° right after latent frame 2: the right part of its view was never in the reference
    assert warped[0, STRIDE:, 2, :, -2:].abs().max() == 0
    assert warped[0, STRIDE:, 2, :, :2].abs().max() > 0
    still_view = warp_condition(cond, _camera("none"), temporal_stride=STRIDE, depth=3.0)
    torch.testing.assert_close(still_view[:, STRIDE:, 1:], cond[:, STRIDE:, 1:], atol=0.1, rtol=0)
    with pytest.raises(ValueError, match="does not match"):
        warp_condition(cond, _camera("none", frames=5), temporal_stride=STRIDE, depth=3.0)


def test_warp_needs_the_still_latent() -> None:
    assert tiny().i2v_warp is not None and tiny().i2v_still
    with pytest.raises(ValueError, match="needs i2v_still"):
        ModelConfig(**(tiny().model_dump() | {"i2v_still": False}))


def test_pixel_warp_moves_the_image_itself_with_its_edges_extended() -> None:
    """A still camera shows the image at every frame; a turn right slides it left by the homography's
    amount and fills the uncovered side with the image's edge, not zeros."""
    ramp = torch.linspace(-1, 1, SIZE)  # a ramp along x: the edge extended is the last column everywhere
    image = torch.stack([ramp.expand(3, SIZE, SIZE), -ramp.expand(3, SIZE, SIZE)])
    still, turn = _camera("none").expand(2, -1, -1, -1, -1), _camera("none", dx=6.0).expand(2, -1, -1, -1, -1)
    views = warp_image(image, still, temporal_stride=STRIDE, depth=3.0)  # (B·T, 3, 4, H, W)
    assert views.shape == (2 * 3, 3, STRIDE, SIZE, SIZE)
    held = image.repeat_interleave(3, 0)[:, :, None].expand_as(views)
    torch.testing.assert_close(views, held, atol=1e-5, rtol=0)
    turned = warp_image(image, turn, temporal_stride=STRIDE, depth=3.0)
    last = turned.unflatten(0, (2, 3))[:, 2, :, -1]  # latent frame 2's last view: 48° right
    assert (last[..., -SIZE // 8 :] - image[..., -1:]).abs().max() < 1e-5  # the right edge, extended
    assert (last[..., : SIZE // 4] - image[..., : SIZE // 4]).abs().mean() > 0.1  # the rest moved


def test_warped_stills_are_per_latent_frame_so_a_stream_gets_the_clips_views() -> None:
    """Each latent frame's view latent depends on its own camera only: a block's, computed from the
    block's camera alone (serving), equals that block's slice of the whole clip's (training). A still
    camera gives the latent of the image held still."""
    from worldloop.model.vae import CausalVideoVAE, tiny_vae

    torch.manual_seed(0)
    vae = CausalVideoVAE(tiny_vae().model_copy(update={"linear_code": False})).eval()
    image = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    camera = _camera("w+a", dx=2.0)
    whole = warped_stills(vae, image, camera, depth=3.0)  # (1, C, 3, h, w)
    block = warped_stills(vae, image, camera[:, 1:3], depth=3.0)
    torch.testing.assert_close(block, whole[:, :, 1:3], atol=1e-5, rtol=0)
    still = warped_stills(vae, image, _camera("none"), depth=3.0)
    held = vae.encode(image[:, :, None].expand(-1, -1, 1 + STRIDE, -1, -1))[:, :, 1:2]
    torch.testing.assert_close(still, held.expand_as(still), atol=1e-4, rtol=0)
    assert (whole[:, :, 2] - still[:, :, 2]).abs().mean() > 1e-3  # the camera moved the view


def test_with_pixel_views_the_model_reads_the_channels_as_given() -> None:
    cfg = tiny().model_copy(update={"i2v_warp_pixels": True})
    model = WorldModel(cfg)
    cond = torch.randn(1, STRIDE + cfg.latent_channels, 3, 8, 8)
    assert model.condition(cond, _camera("none", dx=6.0, frames=9)) is cond
    with pytest.raises(ValueError, match="needs i2v_warp"):
        ModelConfig(**(tiny().model_dump() | {"i2v_warp": None, "i2v_anchor": None, "i2v_warp_pixels": True}))
