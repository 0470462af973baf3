"""Interaction events in the paper's three categories, with exact ground truth.

An :class:`EventPlan` is fixed before rendering (kind, onset, where). ``apply`` turns it into the
visible state of each frame; ``mask`` reads the affected region back from the renderer's tag buffer,
so the mask is what the event actually changed on screen, not a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from worldloop.components.synthworld.state import (
    TAG_DECAL,
    TAG_FLASH,
    TAG_FLOOR,
    TAG_PARTICLE,
    TAG_SPRITE,
    TAG_TORCH,
    Decal,
    FrameState,
    Glow,
    SpriteInstance,
)
from worldloop.components.synthworld.textures import ENTITY_KINDS, PROP_KINDS

if TYPE_CHECKING:
    from worldloop.components.synthworld.render import RenderOutput

EVENT_SPRITE_TAG = 100  # sprite tag of the event's entity (props use their index)


class EventKind(str, Enum):
    snow = "snow"
    rain = "rain"
    night = "night"
    explosion = "explosion"
    open_door = "open_door"
    draw_torch = "draw_torch"
    shoot = "shoot"
    dragon = "dragon"
    vehicle = "vehicle"
    person = "person"


class Category(str, Enum):
    environment = "environment"
    character_action = "character_action"
    entity_emergence = "entity_emergence"


class Target(str, Enum):
    """What the director must place in view for the event."""

    none = "none"
    door = "door"
    floor_ahead = "floor_ahead"
    wall_ahead = "wall_ahead"


@dataclass(frozen=True)
class EventSpec:
    category: Category
    target: Target
    seconds: float  # time from onset until the end state is fully reached
    instruction: str
    agent: str
    action: str
    object: str
    state_change: str
    end_state: str


SPECS: dict[EventKind, EventSpec] = {
    EventKind.snow: EventSpec(
        Category.environment,
        Target.none,
        1.5,
        "make it snow",
        "the weather",
        "turns to snow",
        "the room",
        "snow falls and the floor gradually turns white",
        "the floor is covered in snow",
    ),
    EventKind.rain: EventSpec(
        Category.environment,
        Target.none,
        0.4,
        "make it rain",
        "the weather",
        "turns to rain",
        "the room",
        "rain pours down and the floor turns dark and wet",
        "rain falls on a wet floor",
    ),
    EventKind.night: EventSpec(
        Category.environment,
        Target.none,
        1.0,
        "make it night",
        "the daylight",
        "fades",
        "the room",
        "the light dims until the scene is dark",
        "it is night and the room is dark",
    ),
    EventKind.explosion: EventSpec(
        Category.environment,
        Target.floor_ahead,
        0.5,
        "trigger an explosion",
        "a charge",
        "explodes",
        "the floor ahead",
        "a fireball flares up and leaves smoke and a scorch mark",
        "smoke hangs over a scorched patch of floor",
    ),
    EventKind.open_door: EventSpec(
        Category.character_action,
        Target.door,
        0.6,
        "open the door",
        "the player",
        "opens",
        "the door",
        "the door slides open and reveals the space behind it",
        "the door is open",
    ),
    EventKind.draw_torch: EventSpec(
        Category.character_action,
        Target.none,
        0.5,
        "draw a torch",
        "the player",
        "draws",
        "a torch",
        "a burning torch rises into view and lights the surroundings",
        "the player holds a lit torch",
    ),
    EventKind.shoot: EventSpec(
        Category.character_action,
        Target.wall_ahead,
        0.15,
        "shoot",
        "the player",
        "fires",
        "the pistol",
        "a muzzle flash bursts and a bullet hole appears in the wall ahead",
        "a bullet hole marks the wall",
    ),
    EventKind.dragon: EventSpec(
        Category.entity_emergence,
        Target.floor_ahead,
        0.6,
        "a dragon appears",
        "a dragon",
        "appears",
        "the floor ahead",
        "a green dragon materialises in front of the player",
        "a dragon stands in the room",
    ),
    EventKind.vehicle: EventSpec(
        Category.entity_emergence,
        Target.floor_ahead,
        0.6,
        "a car appears",
        "a red car",
        "appears",
        "the floor ahead",
        "a red car materialises in front of the player",
        "a car stands in the room",
    ),
    EventKind.person: EventSpec(
        Category.entity_emergence,
        Target.floor_ahead,
        0.6,
        "a person appears",
        "a person",
        "appears",
        "the floor ahead",
        "a person materialises in front of the player",
        "a person stands in the room",
    ),
}

ENTITY_SIZE = {EventKind.dragon: (1.3, 1.0), EventKind.vehicle: (1.2, 0.7), EventKind.person: (0.45, 0.9)}


@dataclass(frozen=True)
class EventPlan:
    kind: EventKind
    onset: int
    full: int  # first frame with the end state fully reached
    door: int = -1
    point: tuple[float, float, float] = (0.0, 0.0, 0.0)  # map-frame anchor (floor or wall point)
    door_material: str = ""

    @property
    def spec(self) -> EventSpec:
        return SPECS[self.kind]

    def progress(self, frame: int) -> float:
        """0 before onset, rising to 1 at ``full`` (already > 0 at the onset frame)."""
        if frame < self.onset:
            return 0.0
        return min(1.0, (frame - self.onset + 1) / (self.full - self.onset + 1))


def schedule(kind: EventKind, rng: np.random.Generator, frames: int, fps: int) -> tuple[int, int]:
    """Onset in the first half (after a quarter of the clip) and the frame the change completes."""
    lo, hi = max(1, frames // 4), max(1, frames // 2)
    onset = int(rng.integers(lo, hi + 1)) if frames > 2 else 1
    duration = max(1, round(SPECS[kind].seconds * fps))
    return onset, min(frames - 1, onset + duration)


# Events that need nothing placed in view, so they can follow another event in the same shot (a second
# or third turn of a multi-turn clip); snow and rain exclude each other (one weather at a time).
FOLLOW_UPS: tuple[EventKind, ...] = (EventKind.snow, EventKind.rain, EventKind.night, EventKind.draw_torch)
_EXCLUSIVE = (frozenset({EventKind.snow, EventKind.rain}),)


def compatible(kinds: tuple[EventKind, ...], kind: EventKind) -> bool:
    """Whether ``kind`` can follow ``kinds`` in one clip (a new state, not a repeat or a contradiction)."""
    if kind in kinds:
        return False
    return not any(kind in group and group & set(kinds) for group in _EXCLUSIVE)


def schedule_followups(
    kinds: tuple[EventKind, ...], rng: np.random.Generator, after: int, frames: int, fps: int
) -> list[tuple[int, int]]:
    """(onset, full) of the later turns of a multi-turn clip, whose first event completes at frame
    ``after``: the rest of the clip is split into one span per turn and each starts in the first half
    of its span, after the previous one has completed. A turn that no longer fits is left out (the list
    may be shorter than ``kinds``)."""
    span = (frames - 1 - after) / max(1, len(kinds))
    out: list[tuple[int, int]] = []
    for i, kind in enumerate(kinds):
        lo = max(after + 1 + int(i * span), out[-1][1] + 1 if out else after + 1)
        top = min(max(lo, after + 1 + int(i * span + span / 2)), frames - 2)
        if lo > top:
            break
        onset = int(rng.integers(lo, top + 1))
        duration = max(1, round(SPECS[kind].seconds * fps))
        out.append((onset, min(frames - 1, onset + duration)))
    return out


def apply(plan: EventPlan, state: FrameState, frame: int) -> None:
    """Write the event's visible state for ``frame`` into ``state``."""
    p = plan.progress(frame)
    kind, (x, y, z) = plan.kind, plan.point
    if kind is EventKind.shoot:
        state.gun = True  # the pistol is in hand before and after the shot
    if p <= 0:
        return
    if kind is EventKind.snow:
        state.snowfall, state.snow_cover = min(1.0, 0.25 + p), 0.85 * p
    elif kind is EventKind.rain:
        state.rain = p
    elif kind is EventKind.night:
        state.night = p
    elif kind is EventKind.open_door:
        state.door_open = state.door_open.copy()
        state.door_open[plan.door] = 0.5 - 0.5 * np.cos(np.pi * p)  # ease in and out
    elif kind is EventKind.draw_torch:
        state.torch = p
    elif kind is EventKind.shoot:
        since = frame - plan.onset
        state.muzzle_flash = 1.0 if since == 0 else (0.5 if since == 1 else 0.0)
        state.decals.append(Decal(x, y, z, 0.07, (0.05, 0.05, 0.05), TAG_DECAL, on_floor=False))
    elif kind is EventKind.explosion:
        _explosion(plan, state, frame, p)
    else:
        w, h = ENTITY_SIZE[kind]
        image = len(PROP_KINDS) + ENTITY_KINDS.index(kind.value)
        state.sprites.append(SpriteInstance(image, x, z, w, h, EVENT_SPRITE_TAG, alpha=p))


def _explosion(plan: EventPlan, state: FrameState, frame: int, p: float) -> None:
    x, _, z = plan.point
    fire, smoke = (
        len(PROP_KINDS) + ENTITY_KINDS.index("fireball"),
        len(PROP_KINDS) + ENTITY_KINDS.index("smoke"),
    )
    if frame < plan.full:
        size = 0.3 + 1.1 * p
        state.sprites.append(SpriteInstance(fire, x, z, size, size, EVENT_SPRITE_TAG, emissive=1.3))
        state.glow = Glow(x, -0.3, z, intensity=1.5 * (1.0 - 0.6 * p))
    else:
        fade = max(0.5, 1.0 - 0.02 * (frame - plan.full))
        state.sprites.append(SpriteInstance(smoke, x, z, 1.2, 1.1, EVENT_SPRITE_TAG, alpha=0.8 * fade))
    state.decals.append(Decal(x, 0.0, z, 0.55, (0.08, 0.07, 0.06), TAG_DECAL, on_floor=True))


def mask(plan: EventPlan, out: RenderOutput, frame_offset: int = 0) -> np.ndarray:
    """Affected-region masks (B, H, W) bool for the rendered frames ``frame_offset …``."""
    tags, bsz = out.tags, out.tags.shape[0]
    kind = plan.kind
    if kind in (EventKind.snow, EventKind.rain):
        m = (tags == TAG_FLOOR) | (tags == TAG_PARTICLE)
    elif kind is EventKind.night:
        m = np.ones_like(tags, bool)
    elif kind is EventKind.open_door:
        m = out.door_aperture == plan.door
    elif kind is EventKind.draw_torch:
        m = tags == TAG_TORCH
    elif kind is EventKind.shoot:
        m = (tags == TAG_FLASH) | (tags == TAG_DECAL)
    elif kind is EventKind.explosion:
        m = (tags == TAG_SPRITE + EVENT_SPRITE_TAG) | (tags == TAG_DECAL)
    else:
        m = tags == TAG_SPRITE + EVENT_SPRITE_TAG
    frames = np.arange(frame_offset, frame_offset + bsz)
    return m & (frames >= plan.onset)[:, None, None]


__all__ = [
    "FOLLOW_UPS",
    "Category",
    "EventKind",
    "EventPlan",
    "SPECS",
    "Target",
    "apply",
    "compatible",
    "mask",
    "schedule",
    "schedule_followups",
]
