"""Camera annotation from frames: per-frame intrinsics and camera-to-world poses (DESIGN.md §3).

Videos without camera metadata get their motion estimated from the pixels alone. Corners are tracked
through the clip with pyramidal Lucas–Kanade; each pair of frames is explained either by a pure rotation
(homography ``H = K R K⁻¹``) or by a general rigid motion (essential matrix + chirality check).
Every frame's orientation is the robust mean of what the few frames before it predict, which damps the
drift of plain chaining. Monocular video has no metric scale, so each step gets a fixed length.

Conventions match :mod:`worldloop.model.camera`: OpenCV camera frame (x right, y down, z forward),
``c2w`` relative to frame 0 (``c2w[0]`` is the identity), pixel ``(u, v)`` centred at ``(u+0.5, v+0.5)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worldloop.model.camera import intrinsics_from_fov
from worldloop.video import check_frames

METHODS: tuple[str, ...] = ("essential", "rotation", "hold")


class CameraEstimationConfig(BaseModel):
    """Knobs of :func:`estimate_camera`. Pixel quantities are in pixels of the input frames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fov_deg: float = Field(
        90.0, ge=1.0, le=170.0, description="Assumed horizontal field of view when the video has no K."
    )
    max_features: int = Field(400, ge=8, description="Most corners tracked at once.")
    min_inliers: int = Field(
        12, ge=5, description="A pair with fewer inliers is 'hold': identity motion, flagged."
    )
    ransac_threshold_px: float = Field(
        1.0, gt=0, description="RANSAC inlier threshold (px) of the essential matrix and the homography."
    )
    translation_per_frame: float = Field(
        0.06, ge=0, description="Length given to each step's unit translation (monocular scale is unknown)."
    )
    rotation_parallax_px: float = Field(
        0.3,
        ge=0,
        description="When the rotation-only model fits the essential inliers with a median residual (px) "
        "below this, the pair is a pure rotation: its translation is too small to observe.",
    )
    max_skip: int = Field(
        3,
        ge=1,
        description="Each frame's orientation averages the two-view estimates from up to this many "
        "preceding frames (1 = plain frame-to-frame chaining).",
    )
    rotation_outlier_deg: float = Field(
        3.0, gt=0, description="Those estimates farther than this (deg) from their medoid are dropped."
    )
    feature_quality: float = Field(
        0.01, gt=0, lt=1, description="goodFeaturesToTrack quality level (relative to the best corner)."
    )
    feature_spacing: float = Field(
        1 / 32,
        gt=0,
        lt=1,
        description="Minimum distance between corners as a fraction of the shorter image side (>= 2 px).",
    )
    redetect_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Detect new corners when fewer than this fraction of max_features remain.",
    )
    lk_window_px: int = Field(15, ge=5, description="Lucas–Kanade window size (px).")
    lk_levels: int = Field(3, ge=0, le=6, description="Lucas–Kanade pyramid levels above the full image.")
    max_forward_backward_px: float = Field(
        0.5, gt=0, description="Drop a track whose forward-then-backward flow misses its start by more (px)."
    )


@dataclass(frozen=True)
class CameraEstimate:
    """Estimated camera of a clip of F frames.

    ``intrinsics`` (F, 3, 3) float64; ``c2w`` (F, 4, 4) float64 with ``c2w[0] = I``; ``inlier_ratio``
    (F-1,) inlier fraction of the tracked matches of each consecutive pair (nan for "hold");
    ``methods`` (F-1,) how each consecutive pair was explained: "essential", "rotation" or "hold".
    """

    intrinsics: np.ndarray
    c2w: np.ndarray
    inlier_ratio: np.ndarray
    methods: tuple[str, ...]

    @property
    def confidence(self) -> float:
        """Fraction of pairs not on "hold" times their median inlier ratio, in [0, 1] (1 for F = 1)."""
        if not self.methods:
            return 1.0
        ok = np.array([m != "hold" for m in self.methods])
        if not ok.any():
            return 0.0
        return float(ok.mean() * np.median(self.inlier_ratio[ok]))


# --------------------------------------------------------------------------- rotations and errors


def _project_so3(m: np.ndarray) -> np.ndarray:
    """Nearest rotation (Frobenius norm) to a 3×3 matrix, via SVD."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _angle_deg(rot: np.ndarray) -> float:
    """Rotation angle (deg) of a 3×3 rotation."""
    return math.degrees(math.acos(min(1.0, max(-1.0, (float(np.trace(rot)) - 1.0) / 2.0))))


def _rotations(poses: np.ndarray, name: str) -> np.ndarray:
    """(F, 3, 3) rotation blocks of (F, 4, 4) or (F, 3, 3) poses."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] not in ((3, 3), (4, 4)):
        raise ValueError(f"{name} must have shape (F, 4, 4) or (F, 3, 3), got {poses.shape}")
    return poses[:, :3, :3]


def yaw_pitch_deg(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Yaw and pitch (degrees), each (F,), of poses (F, 4, 4) or (F, 3, 3).

    Inverse of ``rotation_yaw_pitch``: R = R_y(yaw) · R_x(pitch) has the optical axis (third column)
    (sin yaw · cos pitch, −sin pitch, cos yaw · cos pitch). Yaw > 0 turned right, pitch > 0 looking up.
    """
    r = _rotations(c2w, "c2w")
    yaw = np.degrees(np.arctan2(r[:, 0, 2], r[:, 2, 2]))
    pitch = np.degrees(np.arcsin(np.clip(-r[:, 1, 2], -1.0, 1.0)))
    return yaw, pitch


def rotation_error_deg(estimated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame rotation errors (degrees) between two pose tracks, each (F, 4, 4) or (F, 3, 3).

    Returns ``yaw`` (|yaw difference| wrapped to [0, 180]), ``pitch`` (|pitch difference|) and
    ``geodesic`` (the angle of R_est^T R_true), each (F,).
    """
    r_est, r_true = _rotations(estimated, "estimated"), _rotations(truth, "truth")
    if r_est.shape[0] != r_true.shape[0]:
        raise ValueError(f"estimated has {r_est.shape[0]} frames but truth has {r_true.shape[0]}")
    yaw_e, pitch_e = yaw_pitch_deg(r_est)
    yaw_t, pitch_t = yaw_pitch_deg(r_true)
    yaw = np.abs((yaw_e - yaw_t + 180.0) % 360.0 - 180.0)
    rel = np.einsum("fji,fjk->fik", r_est, r_true)  # R_est^T R_true
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return {"yaw": yaw, "pitch": np.abs(pitch_e - pitch_t), "geodesic": np.degrees(np.arccos(cos))}


# --------------------------------------------------------------------------- tracking


def _gray(frame: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey image with mean and contrast normalised, so a flash or nightfall keeps
    LK's brightness constancy roughly true."""
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    std = float(g.std())
    if std < 1e-3:
        return np.full(g.shape, 128, np.uint8)
    return np.clip((g - g.mean()) * (40.0 / std) + 128.0, 0, 255).astype(np.uint8)


def _detect(gray: np.ndarray, existing: np.ndarray, cfg: CameraEstimationConfig) -> np.ndarray:
    """``existing`` (N, 2) float32 corners topped up with new ones away from them, up to max_features."""
    room = cfg.max_features - len(existing)
    if room <= 0:
        return existing
    spacing = max(2.0, cfg.feature_spacing * min(gray.shape))
    mask = np.full(gray.shape, 255, np.uint8)
    for x, y in existing:
        cv2.circle(mask, (round(float(x)), round(float(y))), round(spacing), 0, -1)
    new = cv2.goodFeaturesToTrack(gray, room, cfg.feature_quality, spacing, mask=mask, blockSize=3)
    if new is None:
        return existing
    return np.concatenate([existing, new.reshape(-1, 2).astype(np.float32)])


def _track(
    prev: np.ndarray, nxt: np.ndarray, pts: np.ndarray, cfg: CameraEstimationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """LK flow of ``pts`` (N, 2) from ``prev`` to ``nxt``: the new positions (N, 2) and a mask (N,)
    of the tracks that pass the forward-backward check and stay inside the image."""
    if len(pts) == 0:
        return pts, np.zeros(0, bool)
    lk = {"winSize": (cfg.lk_window_px, cfg.lk_window_px), "maxLevel": cfg.lk_levels}
    p0 = pts.reshape(-1, 1, 2)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, nxt, p0, None, **lk)  # type: ignore[call-overload]
    back, st2, _ = cv2.calcOpticalFlowPyrLK(nxt, prev, p1, None, **lk)  # type: ignore[call-overload]
    h, w = prev.shape
    p1 = p1.reshape(-1, 2)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1)
    ok &= np.linalg.norm(back.reshape(-1, 2) - pts, axis=1) < cfg.max_forward_backward_px
    ok &= (p1[:, 0] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= h - 1)
    return p1, ok


@dataclass(frozen=True)
class _Tracks:
    """Per frame, the track ids (N_f,) and positions (N_f, 2) of the corners seen in it; positions are
    continuous pixel coordinates (centres at +0.5, as K expects)."""

    ids: list[np.ndarray]
    pts: list[np.ndarray]

    def matches(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (M, 2) in frames ``i`` and ``j`` of the tracks seen in both."""
        _, ia, ib = np.intersect1d(self.ids[i], self.ids[j], assume_unique=True, return_indices=True)
        return self.pts[i][ia], self.pts[j][ib]


def _track_clip(frames: np.ndarray, cfg: CameraEstimationConfig) -> _Tracks:
    """Track corners through ``frames`` (F, H, W, 3), detecting more whenever too few survive."""
    ids, pts, next_id = np.zeros(0, np.int64), np.zeros((0, 2), np.float32), 0
    all_ids, all_pts = [], []
    prev = _gray(frames[0])
    for i in range(len(frames)):
        if len(pts) < cfg.redetect_fraction * cfg.max_features:
            pts = _detect(prev, pts, cfg)
            fresh = len(pts) - len(ids)
            ids = np.concatenate([ids, np.arange(next_id, next_id + fresh)])
            next_id += fresh
        all_ids.append(ids)
        all_pts.append(pts.astype(np.float64) + 0.5)  # OpenCV puts pixel centres at integers
        if i + 1 == len(frames):
            break
        nxt = _gray(frames[i + 1])
        moved, ok = _track(prev, nxt, pts, cfg)
        ids, pts, prev = ids[ok], moved[ok], nxt
    return _Tracks(all_ids, all_pts)


# --------------------------------------------------------------------------- two-view motion


@dataclass(frozen=True)
class _PairMotion:
    rotation: np.ndarray  # (3, 3) R of x_j = R x_i + t (frame-i camera coords → frame-j camera coords)
    translation: np.ndarray  # (3,) t: a unit direction, or zero for "rotation" / "hold"
    method: str
    inlier_ratio: float


_HOLD = _PairMotion(np.eye(3), np.zeros(3), "hold", math.nan)


def _reprojection(rot: np.ndarray, rays_a: np.ndarray, b: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N,) pixel distance between ``b`` (N, 2) and the rays ``rays_a`` (N, 3) rotated and projected."""
    p = (rays_a @ rot.T) @ K.T
    z = np.where(np.abs(p[:, 2:]) < 1e-9, 1e-9, p[:, 2:])
    return np.linalg.norm(p[:, :2] / z - b, axis=1)


def _rotation_model(a: np.ndarray, b: np.ndarray, K: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Pure-rotation fit of matches ``a`` → ``b`` (N, 2): x_b ~ K R K⁻¹ x_a. Returns R (3, 3) and the
    residual of every match (N,) in pixels."""
    K_inv = np.linalg.inv(K)
    rays_a = np.c_[a, np.ones(len(a))] @ K_inv.T
    rays_b = np.c_[b, np.ones(len(b))] @ K_inv.T
    # RHO (PROSAC-style) rather than plain RANSAC: the same rotations to 0.01° on SynthWorld clips and
    # ~20% less time per clip; the homography is only a seed for the Kabsch polish below anyway.
    H, _ = cv2.findHomography(a, b, cv2.RHO, thr)
    rot = np.eye(3)
    if H is not None and abs(np.linalg.det(H)) > 1e-12:
        # Under pure rotation H = K R K⁻¹ up to scale: K⁻¹ H K is a scaled rotation.
        rot = _project_so3(K_inv @ H @ K / np.cbrt(np.linalg.det(H)))
    res = _reprojection(rot, rays_a, b, K)
    inl = res < thr
    if inl.sum() >= 3:
        # Polish on the inliers: the rotation that best aligns their unit rays (Kabsch).
        ua = rays_a[inl] / np.linalg.norm(rays_a[inl], axis=1, keepdims=True)
        ub = rays_b[inl] / np.linalg.norm(rays_b[inl], axis=1, keepdims=True)
        rot = _project_so3(ub.T @ ua)
        res = _reprojection(rot, rays_a, b, K)
    return rot, res


def _pair_motion(a: np.ndarray, b: np.ndarray, K: np.ndarray, cfg: CameraEstimationConfig) -> _PairMotion:
    """Relative motion from matched pixels ``a`` (frame i) → ``b`` (frame j), each (N, 2)."""
    if len(a) < cfg.min_inliers:
        return _HOLD
    thr = cfg.ransac_threshold_px
    rot, res = _rotation_model(a, b, K, thr)
    rot_ok = int((res < thr).sum()) >= cfg.min_inliers
    rot_motion = _PairMotion(rot, np.zeros(3), "rotation", float((res < thr).mean()))

    E, mask = cv2.findEssentialMat(a, b, K, method=cv2.USAC_ACCURATE, prob=0.999, threshold=thr)
    if E is not None and E.shape[0] >= 3 and mask is not None and int((mask > 0).sum()) >= cfg.min_inliers:
        inl = mask.ravel() > 0
        # Rotation-dominant: a pure rotation already explains the essential inliers to within the noise,
        # so the translation is unobservable and the essential matrix degenerate (standing still).
        if rot_ok and float(np.median(res[inl])) < cfg.rotation_parallax_px:
            return rot_motion
        # recoverPose keeps the one of E's four (R, t) that puts the points in front of both cameras.
        count, r_e, t_e, _ = cv2.recoverPose(E[:3], a, b, K, mask=mask.copy())
        if count >= cfg.min_inliers:
            return _PairMotion(r_e, t_e.ravel(), "essential", float(inl.mean()))
    return rot_motion if rot_ok else _HOLD


def _robust_mean_rotation(candidates: list[np.ndarray], outlier_deg: float) -> np.ndarray:
    """Chordal mean of the candidate rotations within ``outlier_deg`` of their medoid."""
    if len(candidates) == 1:
        return candidates[0]
    dist = np.array([[_angle_deg(p.T @ q) for q in candidates] for p in candidates])
    medoid = int(np.argmin(dist.sum(axis=1)))
    kept = [c for c, d in zip(candidates, dist[medoid], strict=True) if d <= outlier_deg]
    return _project_so3(np.sum(kept, axis=0))


# --------------------------------------------------------------------------- public entry point


def estimate_camera(frames: np.ndarray, cfg: CameraEstimationConfig | None = None) -> CameraEstimate:
    """Intrinsics (F, 3, 3) and camera-to-world poses (F, 4, 4) of ``frames`` (F, H, W, 3) uint8 RGB.

    K comes from ``cfg.fov_deg``. Frame j's orientation is the robust mean of the orientations that
    frames j−1 … j−max_skip predict through their two-view motion to j; its position steps
    ``translation_per_frame`` along the direction estimated from frame j−1 (none for a pure rotation).
    Poses are relative to frame 0. Raises ValueError on malformed input.
    """
    check_frames(frames, min_side=16)
    cfg = cfg or CameraEstimationConfig()
    n_frames, height, width = frames.shape[:3]
    K = intrinsics_from_fov(width, height, cfg.fov_deg)
    intrinsics = np.repeat(K[None], n_frames, axis=0)
    c2w = np.tile(np.eye(4), (n_frames, 1, 1))
    ratios = np.full(n_frames - 1, np.nan)
    if n_frames == 1:
        return CameraEstimate(intrinsics=intrinsics, c2w=c2w, inlier_ratio=ratios, methods=())

    tracks = _track_clip(frames, cfg)
    methods: list[str] = []
    for j in range(1, n_frames):
        candidates = []
        for i in range(j - 1, max(j - cfg.max_skip, 0) - 1, -1):
            motion = _pair_motion(*tracks.matches(i, j), K, cfg)
            if i == j - 1:
                methods.append(motion.method)
                ratios[i] = motion.inlier_ratio
                # x_j = R x_i + t, so frame j's centre sits at −Rᵀt in frame i's camera coordinates.
                step = -motion.rotation.T @ motion.translation * cfg.translation_per_frame
                c2w[j, :3, 3] = c2w[i, :3, 3] + c2w[i, :3, :3] @ step
            if motion.method != "hold":
                candidates.append(c2w[i, :3, :3] @ motion.rotation.T)  # c2w_j = c2w_i · (cam j → cam i)
        # Without any usable pair the camera holds its orientation.
        c2w[j, :3, :3] = (
            _robust_mean_rotation(candidates, cfg.rotation_outlier_deg) if candidates else c2w[j - 1, :3, :3]
        )
    return CameraEstimate(
        intrinsics=intrinsics,
        c2w=c2w,
        inlier_ratio=ratios,
        methods=tuple(methods),
    )
