"""The wire formats of the serving API: REST bodies and the WebSocket play protocol (DESIGN.md §9).

REST (JSON, OpenAPI at ``/docs``)::

    POST   /v1/sessions            CreateSession → 201 SessionInfo
    GET    /v1/sessions            → SessionList (the caller's sessions)
    GET    /v1/sessions/{id}       → SessionInfo
    GET    /v1/sessions/{id}/frame → the last frame as an image (frame_format)
    DELETE /v1/sessions/{id}       → 204

Every error is JSON ``{"error": {"status": 4xx, "message": "...", "field": "..."?}}``.
Authentication (when API keys are configured): header ``Authorization: Bearer KEY`` or ``X-API-Key:
KEY``; browsers' WebSockets cannot set headers, so the play socket also takes ``?api_key=KEY``.

WebSocket ``/v1/sessions/{id}/play`` — text messages are JSON, frames are binary messages:

* server → client, on connect: :class:`Hello` (JSON) and then ``count`` binary messages, the current
  last frame (frame 0 for a new session; the frame it stopped at after a reconnect);
* client → server: :class:`StepMessage` — the keys held and the mouse motion over the next ``blocks``
  blocks, optionally a text instruction; the server answers each generated block with a
  :class:`BlockMessage` followed by ``count`` binary messages, one encoded image per frame, in order
  (frame indices ``first_index .. first_index + count - 1``). A client keeps one step in flight for a
  smooth stream (send the next step when a block header arrives);
* :class:`PingMessage` → :class:`PongMessage`;
* a bad message gets :class:`ErrorMessage` (status 4xx) and the socket stays open; an unknown session
  closes the socket with code 4404, a bad key with 4401, a newer socket for the same session closes
  the older one with 4409; a generator that stays lost past the resume timeout closes it with 1013 (try
  again): reconnecting to the same id resumes from the last frame. An :class:`ErrorMessage` answers the
  step in flight: that step produced no block.

Keys: ``w a s d space``. Mouse: motion over the whole step in mouse units (1 unit = 1 degree by
default; dx > 0 turns right, dy > 0 looks down), spread evenly over its frames.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from worldloop.controls import Key

MAX_PROMPT_CHARS = 2000
MAX_BLOCKS_PER_STEP = 8
MAX_SEED = 2**53 - 1  # the largest integer a JSON number (an IEEE double) holds exactly
NOT_BLANK = r"\S"  # at least one character that is not white space
IMAGE_FORMAT = "image-base64"  # the OpenAPI format of a base64 PNG/JPEG/WebP image


def _json_integer(value: object) -> object:
    """An integer as JSON Schema has it: a number with no fraction (``3`` or ``3.0``), never a boolean
    or a string (pydantic's lax mode takes both, strict mode refuses ``3.0``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrameFormat(Strict):
    """How frames are encoded on the wire."""

    format: Literal["jpeg", "webp", "png"] = Field("jpeg", description="Image codec of each frame.")
    quality: JsonInt = Field(85, ge=1, le=100, description="JPEG/WebP quality (ignored for PNG).")


Base64Image = Annotated[str, Field(json_schema_extra={"format": IMAGE_FORMAT, "contentEncoding": "base64"})]


class CreateSession(Strict):
    """``POST /v1/sessions``: a reference image and the scene prompt start a stream."""

    image: Base64Image | None = Field(
        None,
        description=(
            "Reference image (PNG/JPEG/WebP), base64 (a data: URL is accepted). It is resized and centre-"
            "cropped to the served resolution; 8x8 pixels to 40 megapixels. Omitted: the "
            "server's sample scene."
        ),
    )
    # "Not blank" as a pattern, so that the schema says it (a validator would be invisible to clients).
    prompt: str = Field(
        ..., min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NOT_BLANK, description="Scene description."
    )
    instruction: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        pattern=NOT_BLANK,
        description="An instruction active from the start.",
    )
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_json_integer)] | None = Field(
        None,
        description="Noise seed (None: random); at most 2^53 - 1, which every JSON client holds exactly.",
    )
    frames: FrameFormat = Field(default_factory=FrameFormat)


class ModelInfo(BaseModel):
    uri: str
    version: str | None = Field(None, description="Registry version serving this session (models:/ URIs).")
    preset: str


class ModelStatus(BaseModel):
    """``GET /v1/model``: what the answering generator replica serves, and the moves of its alias it
    refused (a ``champion`` whose signed promotion chain does not verify is never followed)."""

    uri: str = Field(..., description="The model URI served (an alias stays an alias).")
    version: str | None = Field(..., description="The registry version it names now (models:/ URIs).")
    preset: str
    width: int
    height: int
    fps: float
    frames_per_block: int
    refusals: int = Field(..., description="Moves of the alias this replica refused since it started.")
    last_refusal: str | None = Field(..., description="Why the latest one was refused.")


class SessionInfo(BaseModel):
    """A session as the API reports it."""

    id: str
    prompt: str
    instruction: str | None
    width: int
    height: int
    fps: float = Field(..., description="Playback rate of the model's frames (not generation speed).")
    frames_per_block: int
    frame_index: int = Field(..., description="Index of the last frame generated (0 = the reference).")
    blocks: int = Field(..., description="Blocks generated, over every replica this session lived on.")
    recaches: int = Field(..., description="Instruction changes applied (each one KV recache).")
    resumes: int = Field(..., description="Times the session was rebuilt from its last frame.")
    frames: FrameFormat
    model: ModelInfo
    created_at: float
    last_active: float
    expires_after_s: float


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class StepMessage(Strict):
    """Client → server: generate ``blocks`` blocks with these inputs held."""

    type: Literal["step"]
    keys: list[Key] = Field(default_factory=list, description="Keys held (w a s d space).")
    mouse: tuple[float, float] = Field(
        (0.0, 0.0), description="Mouse (dx, dy) over the whole step, spread over its frames."
    )
    text: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="A new instruction (triggers one recache)."
    )
    blocks: int = Field(1, ge=1, le=MAX_BLOCKS_PER_STEP)

    @field_validator("mouse")
    @classmethod
    def _finite(cls, value: tuple[float, float]) -> tuple[float, float]:
        if any(v != v or abs(v) > 1e4 for v in value):  # NaN or absurd motion
            raise ValueError("mouse motion must be finite and within ±10000 units")
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("an instruction must not be blank (omit it to keep the current one)")
        return value


class PingMessage(Strict):
    type: Literal["ping"]


ClientMessage = Annotated[StepMessage | PingMessage, Field(discriminator="type")]


class Timing(BaseModel):
    """Where one block's time went, in milliseconds."""

    queue_ms: float = Field(..., description="Waiting for the generator (other sessions' blocks).")
    generate_ms: float = Field(..., description="Denoising + clean pass (+ recache) on the workers.")
    decode_ms: float = Field(..., description="VAE decode of the block.")
    encode_ms: float = Field(..., description="Image encoding of its frames.")
    total_ms: float = Field(..., description="From the step message to the block being sent.")


class Hello(BaseModel):
    type: Literal["hello"] = "hello"
    session: SessionInfo
    resumed: bool = Field(..., description="True when the session was rebuilt from its last frame.")
    first_index: int
    count: int = 1
    format: str


class BlockMessage(BaseModel):
    type: Literal["block"] = "block"
    block: int = Field(..., description="Block number in the session (1 = first generated).")
    first_index: int
    count: int
    format: str
    recached: bool = Field(..., description="This block applied a new instruction.")
    instruction: str | None
    timing: Timing


class PongMessage(BaseModel):
    type: Literal["pong"] = "pong"


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    status: int
    message: str
    retry: bool = Field(False, description="Worth retrying (e.g. the generator is restarting).")


# WebSocket close codes (4000–4999 are the application's)
CLOSE_BAD_KEY = 4401
CLOSE_UNKNOWN_SESSION = 4404
CLOSE_TAKEN_OVER = 4409  # another play socket opened for this session; the newest one wins
CLOSE_TRY_AGAIN = 1013
