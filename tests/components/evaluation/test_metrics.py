"""General video metrics: exact values on constructed inputs, SynthWorld ground truth, and degradations
that every metric must notice (a metric that cannot fail is no metric)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from worldloop.components.evaluation.metrics import (
    DYNAMIC_THRESHOLD,
    I3DFeatures,
    InceptionI3d,
    StatsFeatures,
    VideoFeatureExtractor,
    camera_rpe,
    dynamic_degree,
    frechet_distance,
    fvd,
    image_quality,
    load_i3d,
    psnr,
    psnr_per_frame,
    relative_pose_error,
    ssim,
    ssim_per_frame,
    temporal_consistency,
)
from worldloop.components.evaluation.metrics.i3d import preprocess
from worldloop.components.synthworld import SynthConfig, generate_clip
from worldloop.components.synthworld.clip import Clip, render_shot
from worldloop.model.camera import ActionFrame, Key, integrate_poses
from worldloop.model.camera.actions import rotation_yaw_pitch

SMALL = SynthConfig(size=64, frames=17)
RPE_CFG = SynthConfig(size=128, frames=33)


def _noisy(video: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, video.shape)
    return np.clip(video + noise, 0, 255).astype(np.uint8)


def _blurred(video: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in video])


def _brighter(video: np.ndarray, offset: int) -> np.ndarray:
    return np.clip(video.astype(np.int16) + offset, 0, 255).astype(np.uint8)


def _panning(clip: Clip, cfg: SynthConfig, degrees_per_frame: float) -> np.ndarray:
    """The clip's world and start pose, the camera turning right on the spot, no event."""
    actions = [ActionFrame()] + [ActionFrame(mouse_dx=degrees_per_frame)] * (cfg.frames - 1)
    shot = replace(clip.shot, actions=actions, c2w=integrate_poses(actions, cfg.motion), event=None)
    frames, _ = render_shot(clip.world, shot, cfg, clip.seed)
    return frames


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return generate_clip(SMALL, 1).frames


@pytest.fixture(scope="module")
def clip_sets() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two disjoint sets of 12 SynthWorld clips (64 px, 17 frames): the same distribution."""
    return (
        [generate_clip(SMALL, s).frames for s in range(12)],
        [generate_clip(SMALL, s).frames for s in range(12, 24)],
    )


# --------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_is_infinite_for_identical_and_drops_with_noise(clip: np.ndarray) -> None:
    assert psnr(clip, clip.copy()) == math.inf
    assert np.isinf(psnr_per_frame(clip, clip)).all()
    values = [psnr(_noisy(clip, s), clip) for s in (2.0, 5.0, 15.0)]
    assert values[0] > values[1] > values[2] > 20.0
    # σ = 5 grey levels: MSE ≈ (5/255)², 34.2 dB (slightly more where clipping trims the noise).
    assert values[1] == pytest.approx(-10 * math.log10((5 / 255) ** 2), abs=0.5)


def test_psnr_pools_so_one_identical_frame_stays_finite(clip: np.ndarray) -> None:
    noisy = _noisy(clip, 5.0)
    noisy[0] = clip[0]  # the conditioning frame of an image-to-video model
    per_frame = psnr_per_frame(noisy, clip)
    assert per_frame.shape == (len(clip),) and per_frame[0] == math.inf and np.isfinite(per_frame[1:]).all()
    assert math.isfinite(psnr(noisy, clip))


def test_ssim_is_one_for_identical_and_drops_with_blur_and_noise(clip: np.ndarray) -> None:
    assert ssim(clip, clip) == pytest.approx(1.0, abs=1e-6)
    blur = [ssim(_blurred(clip, s), clip) for s in (0.7, 1.5)]
    noise = [ssim(_noisy(clip, s), clip) for s in (4.0, 16.0)]
    assert 1.0 > blur[0] > blur[1] and 1.0 > noise[0] > noise[1]
    assert blur[1] < 0.9 and noise[1] < 0.8
    assert ssim_per_frame(clip, clip).shape == (len(clip),)


def test_ssim_of_flat_frames_matches_the_closed_form() -> None:
    # No structure: σ = 0, so SSIM is the luminance term (2ab + C1) / (a² + b² + C1).
    a, b = np.full((2, 16, 16, 3), 100, np.uint8), np.full((2, 16, 16, 3), 150, np.uint8)
    x, y, c1 = 100 / 255, 150 / 255, 0.01**2
    assert ssim(a, b) == pytest.approx((2 * x * y + c1) / (x * x + y * y + c1), rel=1e-6)


@pytest.mark.parametrize(
    ("video", "reference", "message"),
    [
        (np.zeros((2, 16, 16, 3), np.uint8), np.zeros((3, 16, 16, 3), np.uint8), "differ in shape"),
        (np.zeros((2, 16, 16, 3), np.float32), np.zeros((2, 16, 16, 3), np.uint8), "uint8"),
        (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8), "11 px"),
    ],
)
def test_reference_metrics_reject_bad_input(video: np.ndarray, reference: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ssim(video, reference)


# --------------------------------------------------------------------------- Fréchet distance


def _gaussian_set(mean: np.ndarray, std: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, D) samples whose sample mean is ``mean`` and sample covariance exactly diag(std²)."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # orthonormal columns, each orthogonal to the ones vector
    return mean + q * math.sqrt(n - 1) * std


def test_frechet_distance_matches_closed_form_for_diagonal_covariances() -> None:
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.5])
    a, b = _gaussian_set(mu_a, sd_a, 40, 0), _gaussian_set(mu_b, sd_b, 50, 1)
    expected = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()  # commuting Σ: ‖√Σa − √Σb‖²_F
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # A shared rotation of the feature space changes nothing.
    rot, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    assert frechet_distance(a @ rot, b @ rot) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_bad_features() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))


def test_stats_fvd_is_zero_on_itself_and_grows_with_the_shift(
    clip_sets: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    a, b = clip_sets
    extractor = StatsFeatures()
    assert isinstance(extractor, VideoFeatureExtractor)
    feats_a = extractor.extract(a)
    assert feats_a.shape == (12, extractor.feature_dim) and extractor.name == "stats-v1"
    assert fvd(a, a, extractor=extractor) == pytest.approx(0.0, abs=1e-9)
    same = fvd(a, b, extractor=extractor)  # measured ≈ 0.17: sampling noise of 12 clips per set
    blurred = [
        frechet_distance(feats_a, extractor.extract([_blurred(v, s) for v in a])) for s in (0.7, 1.4, 2.8)
    ]
    brighter = [
        frechet_distance(feats_a, extractor.extract([_brighter(v, d) for v in a])) for d in (10, 20, 40)
    ]
    assert 0.0 < blurred[0] < blurred[1] < blurred[2]  # measured ≈ 0.23, 0.98, 2.6
    assert 0.0 < brighter[0] < brighter[1] < brighter[2]  # measured ≈ 0.009, 0.036, 0.15
    # A real shift of an independent set stands above the sampling noise of two clean sets.
    assert fvd(a, [_blurred(v, 1.4) for v in b], extractor=extractor) > 3 * same
    assert fvd(a, [np.repeat(v[:1], len(v), axis=0) for v in b], extractor=extractor) > 30 * same


def test_fvd_needs_two_clips_per_set(clip: np.ndarray) -> None:
    with pytest.raises(ValueError, match="at least 2 clips"):
        fvd([clip], [clip, clip], extractor=StatsFeatures())


# --------------------------------------------------------------------------- I3D loader


@pytest.fixture(scope="module")
def i3d_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random-weight I3D in the pytorch-i3d layout, saved as safetensors (full size, ~51 MB)."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in InceptionI3d().state_dict().items()}
    path = tmp_path_factory.mktemp("i3d") / "i3d_random.safetensors"
    save_file(state, str(path))
    return path, state


def test_i3d_loader_round_trips_the_checkpoint(i3d_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = i3d_checkpoint
    loaded = load_i3d(path).state_dict()
    assert loaded.keys() == state.keys() and len(state) == 344
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not load_i3d(path).training


def test_i3d_loader_accepts_checkpoints_without_num_batches_tracked(
    i3d_checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, state = i3d_checkpoint
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    save_file(old, str(tmp_path / "old.safetensors"))
    assert torch.equal(load_i3d(tmp_path / "old.safetensors").logits.conv3d.bias, state["logits.conv3d.bias"])


def test_i3d_loader_names_missing_unexpected_and_misshaped_keys(
    i3d_checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, state = i3d_checkpoint
    wrong = {k: v for k, v in state.items() if k != "Mixed_4c.b1b.conv3d.weight"}
    wrong["head.fc.weight"] = torch.zeros(3)
    wrong["logits.conv3d.bias"] = torch.zeros(600)  # a Kinetics-600 head
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError) as info:
        load_i3d(tmp_path / "wrong.safetensors")
    message = str(info.value)
    assert "missing keys ['Mixed_4c.b1b.conv3d.weight']" in message
    assert "unexpected keys ['head.fc.weight']" in message
    assert "logits.conv3d.bias: (600,) (expected (400,))" in message
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_i3d(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        load_i3d(tmp_path / "rgb_imagenet.pt")


def test_i3d_features_follow_the_fvd_input_contract(
    i3d_checkpoint: tuple[Path, dict[str, torch.Tensor]], clip: np.ndarray
) -> None:
    path, _ = i3d_checkpoint
    x = preprocess(clip, 16)
    assert x.shape == (3, 16, 224, 224) and x.min() >= -1.0 and x.max() <= 1.0
    logits = I3DFeatures(path)
    assert isinstance(logits, VideoFeatureExtractor) and logits.name == "i3d-k400-logits-16f"
    feats = logits.extract([clip])
    assert feats.shape == (1, 400) and feats.dtype == np.float64 and np.isfinite(feats).all()
    pool = I3DFeatures(path, output="pool")
    assert pool.extract([clip]).shape == (1, pool.feature_dim) == (1, 1024)
    with pytest.raises(ValueError, match="at least 16"):
        logits.extract([clip[:12]])
    with pytest.raises(ValueError, match="at least 9 frames"):
        I3DFeatures(path, num_frames=8)


# --------------------------------------------------------------------------- image quality


def test_image_quality_drops_with_blur_noise_and_clipping(clip: np.ndarray) -> None:
    clean = image_quality(clip)  # measured: score ≈ 0.95, σ̂ ≈ 0.007
    blur, noise = image_quality(_blurred(clip, 1.5)), image_quality(_noisy(clip, 8.0))
    burnt = image_quality(_brighter(clip, 120))
    assert 0.8 < clean.score <= 1.0
    assert blur.score < 0.3 and blur.sharpness < 0.05 * clean.sharpness
    assert noise.score < 0.8 * clean.score and noise.noise_sigma > 2 * clean.noise_sigma
    assert burnt.score < clean.score and burnt.clipped_fraction > 0.1 > clean.clipped_fraction
    assert image_quality(np.full((2, 32, 32, 3), 128, np.uint8)).score == 0.0  # nothing to see


# --------------------------------------------------------------------------- temporal consistency


def test_flicker_lowers_temporal_consistency(clip: np.ndarray) -> None:
    smooth = temporal_consistency(clip)  # measured ≈ 0.99 on this walking clip
    flicker = clip.astype(np.int16)
    flicker[1::2] += 25  # every other frame 25 grey levels brighter
    flickering = temporal_consistency(np.clip(flicker, 0, 255).astype(np.uint8))
    noisy = temporal_consistency(_noisy(clip, 12.0))
    assert smooth.per_pair.shape == (len(clip) - 1,)
    assert smooth.score > 0.97
    assert flickering.score < smooth.score - 0.05  # measured ≈ 0.90
    assert noisy.score < smooth.score
    assert temporal_consistency(np.repeat(clip[:1], 5, axis=0)).score == pytest.approx(1.0, abs=1e-3)


# --------------------------------------------------------------------------- dynamic degree


def test_static_clip_is_not_dynamic_and_a_pan_is() -> None:
    source = generate_clip(SMALL, 0, any_event=False)
    static = dynamic_degree(_noisy(np.repeat(source.frames[:1], SMALL.frames, axis=0), 2.0))
    pan = dynamic_degree(_panning(source, SMALL, 3.0))  # 3° a frame
    assert not static.dynamic and static.num_moving_pairs == 0
    assert static.magnitude < 0.2 * DYNAMIC_THRESHOLD
    assert pan.dynamic and pan.magnitude > 1.5 * DYNAMIC_THRESHOLD  # measured ≈ 0.036 vs 0.0166
    assert pan.per_pair.shape == (SMALL.frames - 1,) and pan.required_pairs == 4
    # Sampled at half the frame rate (VBench's 8 fps from 16), the same pan moves about twice as far.
    assert dynamic_degree(_panning(source, SMALL, 3.0), stride=2).magnitude > 1.6 * pan.magnitude


# --------------------------------------------------------------------------- camera RPE


def _yaw_drift(c2w: np.ndarray, degrees_per_frame: float) -> np.ndarray:
    """The trajectory with an extra yaw of ``i · degrees_per_frame`` about each camera's own y axis."""
    out = c2w.copy()
    for i in range(len(c2w)):
        out[i, :3, :3] = c2w[i, :3, :3] @ rotation_yaw_pitch(math.radians(i * degrees_per_frame), 0.0)
    return out


@pytest.fixture(scope="module")
def rpe_clip() -> Clip:
    return generate_clip(RPE_CFG, 1)  # 128 px, 33 frames: walks forward/right/left while turning


def test_rpe_is_near_zero_on_ground_truth_and_grows_with_yaw_drift(rpe_clip: Clip) -> None:
    results = [camera_rpe(rpe_clip.frames, _yaw_drift(rpe_clip.c2w, d)) for d in (0.0, 0.5, 1.0, 2.0)]
    truth = results[0]
    # Measured on this clip: rotation mean 0.31° / median 0.23°, translation direction median 3.0°
    # over 32 pairs — the estimator's floor at 128 px.
    assert truth.rotation_deg.shape == (32,) and truth.stride == 1
    assert truth.rotation_median < 0.35 and truth.rotation_mean < 0.5
    assert truth.translation_median < 6.0 and truth.num_missed_translations == 0
    # Measured: rotation median ≈ 0.59°, 1.09°, 2.09° for a drift of 0.5°, 1°, 2° a frame.
    medians = [r.rotation_median for r in results]
    means = [r.rotation_mean for r in results]
    translation = [r.translation_mean for r in results]
    assert medians == sorted(medians) and means == sorted(means) and translation == sorted(translation)
    for r, drift in zip(results[1:], (0.5, 1.0, 2.0), strict=True):
        assert r.rotation_median == pytest.approx(drift, abs=0.2)


def test_rpe_floor_holds_across_synthworld_clips() -> None:
    for seed in (0, 2, 3):
        clip = generate_clip(RPE_CFG, seed)
        result = camera_rpe(clip.frames, clip.c2w)
        assert result.rotation_median < 0.35, f"seed {seed}: {result.rotation_median:.2f} deg"


def test_rpe_fails_a_frozen_video_that_was_told_to_move(rpe_clip: Clip) -> None:
    frozen = np.repeat(rpe_clip.frames[:1], RPE_CFG.frames, axis=0)
    actions = [ActionFrame()] + [ActionFrame(mouse_dx=2.0)] * (RPE_CFG.frames - 1)
    turning = integrate_poses(actions, RPE_CFG.motion)
    result = camera_rpe(frozen, turning)
    np.testing.assert_allclose(result.rotation_deg, 2.0, atol=1e-6)  # every commanded turn is missed
    walking = integrate_poses([ActionFrame()] + [ActionFrame(keys=frozenset({Key.W}))] * 32, RPE_CFG.motion)
    assert camera_rpe(frozen, walking).num_missed_translations == 32


def test_relative_pose_error_is_exact_and_frame_invariant(rpe_clip: Clip) -> None:
    c2w = rpe_clip.c2w
    same = relative_pose_error(c2w, c2w, stride=4)
    assert same.rotation_deg.shape == (29,) and same.rotation_deg.max() < 1e-5
    assert same.translation_deg.max() < 1e-5
    # Moving the whole commanded trajectory to another world frame changes no relative motion.
    world = np.eye(4)
    world[:3, :3], world[:3, 3] = rotation_yaw_pitch(0.7, 0.2), [3.0, -1.0, 2.0]
    moved = relative_pose_error(c2w, world @ c2w)
    assert moved.rotation_deg.max() < 1e-5 and moved.translation_deg.max() < 1e-5


def test_rpe_rejects_bad_input(rpe_clip: Clip) -> None:
    with pytest.raises(ValueError, match="33 frames but commanded_c2w has 32"):
        camera_rpe(rpe_clip.frames, rpe_clip.c2w[:32])
    with pytest.raises(ValueError, match=r"\(F, 4, 4\)"):
        relative_pose_error(rpe_clip.c2w[:, :3], rpe_clip.c2w[:, :3])
    with pytest.raises(ValueError, match="stride"):
        relative_pose_error(rpe_clip.c2w, rpe_clip.c2w, stride=33)
