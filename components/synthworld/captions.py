"""Scene captions (long/short) and interaction captions from the clip's known facts."""

from __future__ import annotations

import math

import numpy as np

from worldloop.components.synthworld.director import Shot
from worldloop.components.synthworld.events import EventPlan
from worldloop.components.synthworld.schema import SceneRecord
from worldloop.components.synthworld.textures import FLOOR_MATERIALS, WALL_MATERIALS
from worldloop.components.synthworld.world import WorldMap
from worldloop.data import Captions, InteractionCaption
from worldloop.model.camera import Key

FLOOR_WORDS = {
    "checker": "black-and-white checkered",
    "planks": "wooden plank",
    "flagstone": "flagstone",
    "carpet": "red carpeted",
}
WALL_WORDS = {
    "brick": "red brick",
    "stone": "grey stone",
    "wood": "wood-panelled",
    "metal": "riveted metal",
    "plaster": "pale plaster",
    "tile": "green-tiled",
}


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def scene_facts(world: WorldMap, shot: Shot) -> SceneRecord:
    room_index = world.room_at(float(shot.start[0]), float(shot.start[2]))
    if room_index is None:
        return SceneRecord(place="corridor", walls="stone", floor="flagstone", props=[], doors=0)
    room = world.rooms[room_index]
    props = sorted({p.kind for p in world.props if room.contains(p.x, p.z)})
    doors = sum(1 for d in world.doors if d.room == room_index)
    return SceneRecord(
        place=room.style,
        walls=WALL_MATERIALS[room.wall_material - 1],
        floor=FLOOR_MATERIALS[room.floor_material],
        props=props,
        doors=doors,
    )


def describe_motion(shot: Shot) -> str:
    """What the camera does over the clip, from the actions and the resulting poses."""
    counts: dict[str, int] = {}
    for a in shot.actions[1:]:
        for key in a.keys:
            counts[key.value] = counts.get(key.value, 0) + 1
    total = max(1, len(shot.actions) - 1)
    parts = []
    words = {
        Key.W.value: "moves forward",
        Key.S.value: "backs up",
        Key.A.value: "strafes left",
        Key.D.value: "strafes right",
        Key.SPACE.value: "rises briefly",
    }
    for name, word in words.items():
        if counts.get(name, 0) >= 0.25 * total:
            parts.append(word)
    fwd_end = shot.c2w[-1, :3, 2]
    turn = math.degrees(math.atan2(fwd_end[0], fwd_end[2]))
    if abs(turn) >= 10:
        parts.append(f"turns {'right' if turn > 0 else 'left'} by about {abs(round(turn / 5) * 5)} degrees")
    pitch = math.degrees(math.asin(float(np.clip(-fwd_end[1], -1, 1))))
    if abs(pitch) >= 8:
        parts.append(f"looks {'up' if pitch > 0 else 'down'}")
    if not parts:
        return "The camera holds almost still."
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"The camera {body}."


def scene_captions(facts: SceneRecord, shot: Shot) -> Captions:
    place = "a narrow stone corridor" if facts.place == "corridor" else _a(facts.place)
    walls, floor = WALL_WORDS.get(facts.walls, facts.walls), FLOOR_WORDS.get(facts.floor, facts.floor)
    long = [f"A first-person view inside {place} with {walls} walls and a {floor} floor."]
    if facts.props:
        items = [_a(p) for p in facts.props]
        listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        long.append(f"{listed[0].upper()}{listed[1:]} stand{'s' if len(items) == 1 else ''} near the walls.")
    if facts.doors:
        long.append(
            "A sliding door leads out of the room."
            if facts.doors == 1
            else f"{facts.doors} sliding doors lead out of the room."
        )
    long.append(describe_motion(shot))
    short = f"First-person view of {place} with {walls} walls."
    return Captions(long=" ".join(long), short=short)


def interaction_caption(plan: EventPlan) -> InteractionCaption:
    spec = plan.spec
    obj = f"the {plan.door_material}" if plan.door_material else spec.object
    text = f"{spec.agent[0].upper()}{spec.agent[1:]} {spec.action} {obj}: {spec.state_change}."
    if spec.object in ("the room", "the floor ahead"):
        text = f"{spec.agent[0].upper()}{spec.agent[1:]} {spec.action}; {spec.state_change}."
    return InteractionCaption(
        agent=spec.agent,
        action=spec.action,
        object=obj,
        state_change=spec.state_change,
        text=text,
        instruction=spec.instruction,
    )
