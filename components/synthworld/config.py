"""SynthWorld configuration (pydantic; validated at the edge)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worldloop.components.synthworld.events import EventKind
from worldloop.model.camera import CameraMotion


class SynthConfig(BaseModel):
    """How clips are generated. Sizes are square; every length is in frames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(128, ge=32, le=512, description="Frame width and height in pixels (even).")
    frames: int = Field(33, ge=2, le=2048, description="Frames per clip.")
    fps: int = Field(16, ge=1, le=120, description="Frame rate written to the video.")
    fov_deg: float = Field(90.0, ge=30.0, le=120.0, description="Horizontal field of view.")
    map_cells: int = Field(24, ge=16, le=96, description="The world grid is map_cells × map_cells.")
    wall_height: float = Field(1.2, gt=0.5, le=4.0, description="Floor-to-ceiling height (world units).")
    eye_height: float = Field(0.5, gt=0.1, description="Camera height above the floor at rest.")
    fog_distance: float = Field(9.0, gt=0, description="Distance at which light falls to ~1/2.")
    motion: CameraMotion = Field(default_factory=CameraMotion, description="Action → camera speeds.")
    event_kinds: tuple[EventKind, ...] = Field(
        tuple(EventKind), min_length=1, description="Interaction kinds to draw from."
    )
    event_probability: float = Field(1.0, ge=0, le=1, description="Chance a clip has an interaction.")
    multi_turn_probability: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Chance a clip with an interaction is multi-turn: later events follow, one turn each.",
    )
    max_turns: int = Field(3, ge=1, le=3, description="Most events (turns) in a multi-turn clip.")
    twins: bool = Field(
        False,
        description="Also write each clip with an interaction as its counterfactual twin: the same shot, "
        "world and camera with no event triggered and no instruction (NAME-twin).",
    )
    crf: int = Field(18, ge=0, le=51, description="H.264 constant rate factor of written videos.")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.size % 2:
            raise ValueError(f"size must be even for H.264 (yuv420p), got {self.size}")
        if self.eye_height + self.motion.max_rise >= self.wall_height - 0.05:
            raise ValueError("eye_height + motion.max_rise must stay below wall_height - 0.05")
        return self

    @property
    def angular_samples(self) -> int:
        """Horizontal rays cast per frame over 360°: about 3 per pixel of horizontal resolution."""
        per_degree = self.size / self.fov_deg
        return int(360 * per_degree * 3)
