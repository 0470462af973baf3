"""Camera relative pose error (RPE) of a generated clip against its commanded trajectory.

The generated frames' camera is estimated from the pixels with the curation estimator
(:func:`worldloop.components.curation.camera_estimation.estimate_camera`) and compared, pair by pair, with the
trajectory the actions commanded (camera-to-world 4×4, OpenCV convention, as SynthWorld records and
:func:`worldloop.model.camera.actions_to_camera` produces). For each pair (i, i + stride) the relative
motion Δ = c2w_i⁻¹ · c2w_{i+stride} (frame i+stride's camera in frame i's camera coordinates) gives

* rotation error — the angle of R_Δ,estᵀ · R_Δ,cmd in degrees;
* translation direction error — the angle between the two translations t_Δ, in degrees. Monocular video
  has no metric scale (the estimator gives each step a fixed length), so only the direction is compared,
  and only on pairs where both cameras moved. A pair whose command moved but whose estimate did not
  (the estimator saw a pure rotation or nothing) is counted in ``num_missed_translations``.

RPE follows Sturm et al. (2012, TUM RGB-D) without scale: lower is better, 0 for a perfect match. The
result includes the estimator's own error — on SynthWorld ground truth it is a fraction of a degree per
pair, which is the floor of this metric; it is no measure of the estimator on other footage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldloop.components.curation.camera_estimation import CameraEstimationConfig, estimate_camera
from worldloop.components.evaluation.metrics.video_input import check_video

MIN_TRANSLATION = 1e-6  # a relative translation shorter than this (world units) counts as "did not move"


@dataclass(frozen=True)
class CameraRPE:
    """Per-pair errors (degrees) and their summaries. ``translation_deg`` holds only the pairs where
    both cameras moved; its summaries are nan when there is none."""

    rotation_deg: np.ndarray  # (P,)
    translation_deg: np.ndarray  # (P_t,) P_t ≤ P
    num_missed_translations: int
    stride: int

    @property
    def rotation_mean(self) -> float:
        return float(self.rotation_deg.mean())

    @property
    def rotation_median(self) -> float:
        return float(np.median(self.rotation_deg))

    @property
    def translation_mean(self) -> float:
        return float(self.translation_deg.mean()) if self.translation_deg.size else float("nan")

    @property
    def translation_median(self) -> float:
        return float(np.median(self.translation_deg)) if self.translation_deg.size else float("nan")


def _check_poses(c2w: np.ndarray, name: str) -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"{name} must be camera-to-world matrices of shape (F, 4, 4), got {c2w.shape}")
    if not np.isfinite(c2w).all():
        raise ValueError(f"{name} contains NaN or inf")
    return c2w


def _relative(c2w: np.ndarray, stride: int) -> np.ndarray:
    """(P, 4, 4) c2w_i⁻¹ · c2w_{i+stride} for i = 0 … F − 1 − stride."""
    rel: np.ndarray = np.linalg.inv(c2w[:-stride]) @ c2w[stride:]
    return rel


def _angle_deg(cos: np.ndarray) -> np.ndarray:
    return np.asarray(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def relative_pose_error(
    estimated_c2w: np.ndarray, commanded_c2w: np.ndarray, *, stride: int = 1
) -> CameraRPE:
    """RPE between two pose tracks, each (F, 4, 4) camera-to-world, over pairs (i, i + stride).

    Any rigid change of world frame cancels in the relative motions, so the tracks need not start at the
    same pose. See the module doc for the definition.
    """
    est, cmd = _check_poses(estimated_c2w, "estimated_c2w"), _check_poses(commanded_c2w, "commanded_c2w")
    if len(est) != len(cmd):
        raise ValueError(f"estimated_c2w has {len(est)} frames but commanded_c2w has {len(cmd)}")
    if stride < 1 or len(est) <= stride:
        raise ValueError(f"need 1 <= stride < F, got stride={stride} for F={len(est)}")
    rel_est, rel_cmd = _relative(est, stride), _relative(cmd, stride)
    rot = np.einsum("pji,pjk->pik", rel_est[:, :3, :3], rel_cmd[:, :3, :3])  # R_estᵀ R_cmd
    rotation = _angle_deg((np.trace(rot, axis1=1, axis2=2) - 1.0) / 2.0)
    t_est, t_cmd = rel_est[:, :3, 3], rel_cmd[:, :3, 3]
    n_est, n_cmd = np.linalg.norm(t_est, axis=1), np.linalg.norm(t_cmd, axis=1)
    both = (n_est >= MIN_TRANSLATION) & (n_cmd >= MIN_TRANSLATION)
    cos = (t_est[both] * t_cmd[both]).sum(axis=1) / (n_est[both] * n_cmd[both])
    return CameraRPE(
        rotation_deg=rotation,
        translation_deg=_angle_deg(cos),
        num_missed_translations=int(((n_cmd >= MIN_TRANSLATION) & (n_est < MIN_TRANSLATION)).sum()),
        stride=stride,
    )


def camera_rpe(
    video: np.ndarray,
    commanded_c2w: np.ndarray,
    *,
    stride: int = 1,
    camera: CameraEstimationConfig | None = None,
) -> CameraRPE:
    """RPE of the camera estimated from ``video`` (F, H, W, 3) uint8 against ``commanded_c2w`` (F, 4, 4).

    ``camera`` configures the estimator; set its ``fov_deg`` to the field of view the clip was generated
    with (the estimator's default is 90°, SynthWorld's too). Lower is better.
    """
    check_video(video, min_frames=2, min_side=16)
    commanded = _check_poses(commanded_c2w, "commanded_c2w")
    if len(commanded) != len(video):
        raise ValueError(
            f"video has {len(video)} frames but commanded_c2w has {len(commanded)}; "
            "pass the commanded pose of every frame"
        )
    estimate = estimate_camera(video, camera)
    return relative_pose_error(estimate.c2w, commanded, stride=stride)
