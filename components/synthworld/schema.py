"""The JSON written next to every labelled clip (``NAME.json``) and the index line per clip."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from worldloop.data import ActionRecord, Captions, InteractionCaption


class EventRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    category: str = Field(description="environment | character_action | entity_emergence")
    onset_frame: int
    full_frame: int = Field(description="First frame at which the end state is fully reached.")
    end_state: str
    caption: InteractionCaption
    mask_file: str = Field(description="NPZ with per-frame affected-region masks (F, H, W) bool.")
    mask_pixels: list[int] = Field(description="Affected pixels per frame (0 before onset).")


class SceneRecord(BaseModel):
    """Facts about where the clip starts; captions are written from these."""

    model_config = ConfigDict(extra="forbid")

    place: str = Field(description="Room style, or 'corridor'.")
    walls: str
    floor: str
    props: list[str]
    doors: int


class ClipRecord(BaseModel):
    """Everything known about a labelled clip; poses are OpenCV camera-to-world, frame 0 = identity."""

    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int
    frames: int
    fps: int
    width: int
    height: int
    video: str
    intrinsics: list[list[list[float]]] = Field(description="K per frame, (F, 3, 3).")
    c2w: list[list[list[float]]] = Field(description="Camera-to-world per frame, (F, 4, 4).")
    actions: list[ActionRecord]
    captions: Captions
    events: list[EventRecord]
    scene: SceneRecord
