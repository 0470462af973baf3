"""Curation settings: every threshold in one validated, YAML-loadable config (DESIGN.md §3).

Defaults were calibrated on SynthWorld raw pairs (H.264, 64–128 px): they separate the injected
defects from good clips, including good clips with night falling, flashes and camera standing still.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worldloop.components.curation.camera_estimation import CameraEstimationConfig
from worldloop.components.curation.captioning import CaptionerConfig


class ShotConfig(BaseModel):
    """Hard-cut detection on motion-compensated residuals (see :mod:`.signals`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_residual: float = Field(
        0.27, gt=0, description="A cut's median intensity residual must reach this (normalised units)."
    )
    min_edge_ratio: float = Field(
        1.5, gt=0, description="... its gradient residual this many times its neighbours' median ..."
    )
    min_residual_ratio: float = Field(
        2.0, gt=0, description="... its intensity residual this many times its neighbours' median ..."
    )
    min_joint_ratio: float = Field(
        4.0, gt=0, description="... and the product of the two ratios this much (a spike in both)."
    )
    max_level_shift: float = Field(
        1.9,
        gt=1,
        description="A spike after which the residual stays this many times higher than before (snow or "
        "rain starting) is an event, not a cut.",
    )
    neighbour_radius: int = Field(6, ge=1, description="Pairs on each side that form the local baseline.")
    edge_floor: float = Field(
        0.08, gt=0, description="Smallest gradient baseline in the ratio (still stretches give ≈ 0)."
    )
    residual_floor: float = Field(0.05, gt=0, description="Smallest intensity baseline in the ratio.")
    min_gap: int = Field(4, ge=1, description="Two cuts closer than this many frames keep the stronger.")


class QualityConfig(BaseModel):
    """Filters that quarantine a shot, with the reason recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_frames: int = Field(9, ge=2, description="Shorter shots are dropped as too_short.")
    max_frames: int = Field(
        257, ge=9, description="Longer shots are cut into consecutive clips of at most this length."
    )
    min_luma: float = Field(
        0.015, ge=0, le=1, description="Median mean-luma below this is too_dark (black / dead video)."
    )
    min_sharpness: float = Field(
        2.0, ge=0, description="Median Laplacian variance (grey levels², working size) below this is blurry."
    )
    min_motion: float = Field(
        0.05,
        ge=0,
        description="A shot is static when the 90th percentile of per-pair flow (px/frame) stays below "
        "this and nothing changes either.",
    )
    min_change: float = Field(
        0.02, ge=0, description="... and the 90th percentile of the intensity residual stays below this."
    )

    @model_validator(mode="after")
    def _check(self) -> QualityConfig:
        if self.max_frames < self.min_frames:
            raise ValueError("max_frames must be ≥ min_frames")
        return self


class InteractionConfig(BaseModel):
    """Mining a state transition that camera motion does not explain (the paper's interaction)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pixel_threshold: float = Field(
        0.6, gt=0, description="Residual (normalised intensity) above which a pixel counts as changed."
    )
    min_area: float = Field(
        0.01, gt=0, le=1, description="Changed-pixel fraction a pair needs to count as active."
    )
    min_persistence: int = Field(
        3, ge=1, description="Active pairs within the onset window needed to call it a transition."
    )
    window: int = Field(8, ge=2, description="Frames after the onset inspected for persistence.")
    global_area: float = Field(
        0.5, gt=0, le=1, description="Changed area above this is a global (weather / lighting) change."
    )
    min_luma_shift: float = Field(
        0.06, ge=0, description="A brightness shift (first vs last quarter) this large is a global change."
    )


class CurationConfig(BaseModel):
    """Everything ``worldloop curate`` does, with the defaults of the local profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shots: ShotConfig = Field(default_factory=ShotConfig, description="Hard-cut detection.")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Quality filters.")
    interaction: InteractionConfig = Field(
        default_factory=InteractionConfig, description="Interaction mining."
    )
    camera: CameraEstimationConfig = Field(
        default_factory=CameraEstimationConfig, description="Camera estimation when metadata has none."
    )
    captioner: CaptionerConfig = Field(
        default_factory=CaptionerConfig, description="Which captioner writes scene and interaction captions."
    )
    work_size: int = Field(64, ge=16, le=512, description="Analysis resolution (px) for flow and residuals.")
    caption_frames: int = Field(4, ge=1, le=16, description="Keyframes handed to the captioner.")
    shard_size: int = Field(16, ge=1, description="Source pairs per output shard (the unit of resume).")
    crf: int = Field(18, ge=0, le=51, description="H.264 quality of re-encoded clips.")
