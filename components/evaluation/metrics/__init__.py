"""General video metrics (DESIGN.md §7): pure functions of (T, H, W, 3) uint8 RGB clips.

* fidelity to SynthWorld ground truth — :func:`psnr`, :func:`ssim` (and their per-frame curves);
* distribution distance — :func:`fvd` / :func:`frechet_distance` over a pluggable
  :class:`VideoFeatureExtractor`: :class:`I3DFeatures` (Kinetics-400 I3D from a local safetensors file,
  the published FVD network) or the offline :class:`StatsFeatures` (regression tracking only);
* no-reference — :func:`image_quality` (technical proxy), :func:`temporal_consistency`,
  :func:`dynamic_degree` (Farneback flow, VBench rule);
* control — :func:`camera_rpe` of the camera estimated from the frames against the commanded trajectory.

Each docstring states the range, the direction and what the number is not comparable with.
"""

from worldloop.components.evaluation.metrics.camera_rpe import CameraRPE, camera_rpe, relative_pose_error
from worldloop.components.evaluation.metrics.dynamic_degree import (
    DYNAMIC_THRESHOLD,
    DynamicDegree,
    dynamic_degree,
)
from worldloop.components.evaluation.metrics.frechet import VideoFeatureExtractor, frechet_distance, fvd
from worldloop.components.evaluation.metrics.i3d import I3DFeatures, InceptionI3d, load_i3d
from worldloop.components.evaluation.metrics.image_quality import ImageQuality, image_quality
from worldloop.components.evaluation.metrics.reference import psnr, psnr_per_frame, ssim, ssim_per_frame
from worldloop.components.evaluation.metrics.stats_features import StatsFeatures
from worldloop.components.evaluation.metrics.temporal_consistency import (
    TemporalConsistency,
    temporal_consistency,
)

__all__ = [
    "DYNAMIC_THRESHOLD",
    "CameraRPE",
    "DynamicDegree",
    "I3DFeatures",
    "ImageQuality",
    "InceptionI3d",
    "StatsFeatures",
    "TemporalConsistency",
    "VideoFeatureExtractor",
    "camera_rpe",
    "dynamic_degree",
    "frechet_distance",
    "fvd",
    "image_quality",
    "load_i3d",
    "psnr",
    "psnr_per_frame",
    "relative_pose_error",
    "ssim",
    "ssim_per_frame",
    "temporal_consistency",
]
