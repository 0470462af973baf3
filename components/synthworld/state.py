"""What the renderer draws for one frame: camera + the visible consequences of events."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Tags of the thing each pixel shows (the renderer's id buffer); events build masks from them.
TAG_WALL, TAG_FLOOR, TAG_CEILING, TAG_PARTICLE = 1, 2, 3, 4
TAG_DOOR = 100  # + door index
TAG_SPRITE = 200  # + sprite tag offset (props 0..99, event entities 100..)
TAG_TORCH, TAG_GUN, TAG_FLASH = 300, 301, 302
TAG_DECAL = 400  # + decal index


@dataclass(frozen=True)
class SpriteInstance:
    """A camera-facing billboard standing on the floor (``base`` lifts it)."""

    image: int  # index into TextureBank.sprites
    x: float
    z: float
    width: float
    height: float
    tag: int
    alpha: float = 1.0
    base: float = 0.0
    emissive: float = 0.0  # > 0: self-lit (fire), brightness multiplier


@dataclass(frozen=True)
class Decal:
    """A dark/coloured disc on a wall (bullet hole) or the floor (scorch mark)."""

    x: float
    y: float
    z: float
    radius: float
    color: tuple[float, float, float]
    tag: int
    on_floor: bool


@dataclass(frozen=True)
class Glow:
    """A point light (explosion) at (x, y, z)."""

    x: float
    y: float
    z: float
    intensity: float


@dataclass
class FrameState:
    rotation: np.ndarray  # (3, 3) camera-to-map rotation
    position: np.ndarray  # (3,) camera centre in the map frame
    door_open: np.ndarray  # (D,) open fraction of every door
    frame_index: int = 0
    particle_seed: int = 0
    snow_cover: float = 0.0  # fraction of the floor covered
    snowfall: float = 0.0  # falling-flake density
    rain: float = 0.0
    night: float = 0.0
    torch: float = 0.0  # 0: no torch, (0, 1]: raised fraction
    gun: bool = False
    muzzle_flash: float = 0.0
    glow: Glow | None = None
    sprites: list[SpriteInstance] = field(default_factory=list)
    decals: list[Decal] = field(default_factory=list)
