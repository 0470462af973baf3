"""The per-clip JSON of the training-data format: what is known about one clip, whoever wrote it.

Every clip of every dataset — SynthWorld's labelled clips, curated clips from anyone's videos — is a
:class:`ClipMeta` next to its MP4 in a shard. Facts a writer does not know are absent (``None`` or
empty), never invented: curated clips have estimated cameras and no actions; SynthWorld clips have
exact cameras, the keys that were held, and the events with their masks.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Captions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    long: str = Field(description="Multi-sentence scene description.")
    short: str = Field(description="One-line scene description.")


class InteractionCaption(BaseModel):
    """The paper's definition: a clear agent, an action, a state transition with causality."""

    model_config = ConfigDict(extra="forbid")

    agent: str
    action: str
    object: str
    state_change: str
    text: str = Field(description="The interaction as one sentence.")
    instruction: str = Field(description="Imperative form a player would type, e.g. 'open the door'.")


class ActionRecord(BaseModel):
    """The controls held during one frame."""

    model_config = ConfigDict(extra="forbid")

    keys: list[str]
    mouse: tuple[float, float]


CameraSource = Literal["truth", "metadata", "estimated"]


class CameraTrack(BaseModel):
    """Per-frame camera: ``truth`` (rendered, exact), ``metadata`` (a sidecar the source came with) or
    ``estimated`` (from the pixels, with the estimator's confidence)."""

    model_config = ConfigDict(extra="forbid")

    source: CameraSource
    confidence: float = Field(ge=0, le=1, description="1 for truth and metadata; the estimator's otherwise.")
    intrinsics: list[list[list[float]]] = Field(description="K per frame, (F, 3, 3), pixels.")
    c2w: list[list[list[float]]] = Field(description="Camera-to-world per frame, (F, 4, 4), OpenCV.")


class ClipEvent(BaseModel):
    """A state transition inside the clip (SynthWorld knows them exactly)."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    category: str = Field(description="environment | character_action | entity_emergence")
    onset_frame: int = Field(ge=0)
    full_frame: int = Field(ge=0, description="First frame at which the end state is fully reached.")
    end_state: str
    interaction: InteractionCaption | None = Field(
        None, description="The event's caption and instruction: one turn of a multi-turn clip."
    )


class ClipMeta(BaseModel):
    """One clip of a dataset: the JSON member ``KEY.json`` beside ``KEY.mp4`` (and, when the writer
    knows the affected regions, ``KEY.masks.npz``) in a shard."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="Member stem, unique in the dataset.")
    source: str = Field(description="Where the pixels came from: an input video's URI, or synthworld:SEED.")
    frames: int = Field(ge=1)
    fps: float = Field(gt=0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    camera: CameraTrack
    captions: Captions
    actions: list[ActionRecord] | None = Field(None, description="Per frame, when known.")
    interaction: InteractionCaption | None = Field(None, description="The (first) interaction.")
    interaction_onset: int | None = Field(None, description="Frame where the state transition starts.")
    events: list[ClipEvent] = Field(
        default_factory=list, description="Every event in order of onset; each with a caption is one turn."
    )
    masks: bool = Field(False, description="Whether KEY.masks.npz (affected regions per frame) is present.")

    @model_validator(mode="after")
    def _shapes(self) -> ClipMeta:
        f = self.frames
        if len(self.camera.intrinsics) != f or len(self.camera.c2w) != f:
            raise ValueError(
                f"{self.key}: the camera track has {len(self.camera.intrinsics)} intrinsics and "
                f"{len(self.camera.c2w)} poses for {f} frames"
            )
        if self.actions is not None and len(self.actions) not in (f, f - 1):
            raise ValueError(f"{self.key}: {len(self.actions)} actions for {f} frames")
        return self

    @property
    def fov_deg(self) -> float:
        """Horizontal field of view of the first frame's camera."""
        return 2 * math.degrees(math.atan(self.width / (2 * float(self.camera.intrinsics[0][0][0]))))
