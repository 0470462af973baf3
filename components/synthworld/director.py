"""Places the camera and the event's target, then samples a collision-free action track that keeps
the target in view. Everything is drawn from the clip's own generator, so a seed fixes the clip."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from worldloop.components.synthworld.config import SynthConfig
from worldloop.components.synthworld.events import SPECS, EventKind, EventPlan, Target, schedule
from worldloop.components.synthworld.textures import DOOR_MATERIALS
from worldloop.components.synthworld.world import WorldMap
from worldloop.model.camera import ActionFrame, Key, integrate_poses, intrinsics_from_fov
from worldloop.model.camera.actions import rotation_yaw_pitch

CAMERA_RADIUS = 0.25
KEY_CHOICES: tuple[tuple[frozenset[Key], float], ...] = (
    (frozenset(), 0.14),
    (frozenset({Key.W}), 0.34),
    (frozenset({Key.S}), 0.07),
    (frozenset({Key.A}), 0.08),
    (frozenset({Key.D}), 0.08),
    (frozenset({Key.W, Key.A}), 0.1),
    (frozenset({Key.W, Key.D}), 0.1),
    (frozenset({Key.SPACE}), 0.05),
    (frozenset({Key.W, Key.SPACE}), 0.04),
)


@dataclass(frozen=True)
class Shot:
    """A planned clip: where the camera starts in the map, what it does, and the event — with, in a
    multi-turn clip, the events that follow it (each a later turn with its own instruction)."""

    start: np.ndarray  # (3,) map position of frame 0
    yaw0: float  # map heading of frame 0 (radians)
    actions: list[ActionFrame]
    c2w: np.ndarray  # (F, 4, 4) relative to frame 0
    event: EventPlan | None
    followups: tuple[EventPlan, ...] = ()  # later turns, in order (kinds needing nothing in view)

    @property
    def events(self) -> tuple[EventPlan, ...]:
        """Every event of the clip in order of onset (empty without an event)."""
        return () if self.event is None else (self.event, *self.followups)

    def map_pose(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(R, p) of frame ``i`` in the map frame."""
        base = rotation_yaw_pitch(self.yaw0, 0.0)
        return base @ self.c2w[i, :3, :3], self.start + base @ self.c2w[i, :3, 3]


def _heading(dx: float, dz: float) -> float:
    return math.atan2(dx, dz)


def _free_distance(world: WorldMap, x: float, z: float, yaw: float, limit: float = 6.0) -> float:
    step = 0.1
    d = 0.0
    while d < limit and world.is_free(
        x + math.sin(yaw) * (d + step), z + math.cos(yaw) * (d + step), CAMERA_RADIUS
    ):
        d += step
    return d


def _place(
    world: WorldMap, cfg: SynthConfig, kind: EventKind | None, rng: np.random.Generator
) -> tuple[np.ndarray, float, int, tuple[float, float]]:
    """Start position, heading, door index (or −1) and the floor target (x, z) if any."""
    target = SPECS[kind].target if kind else Target.none
    if target is Target.door and not world.doors:
        raise PlanRejected("this world has no door")
    for _ in range(500):
        if target is Target.door:
            di = int(rng.integers(len(world.doors)))
            door = world.doors[di]
            room = world.rooms[door.room]
            cx, cz = door.centre
            inward = np.sign(np.array(room.centre) - np.array([cx, cz])) * (
                np.array([0, 1]) if door.axis == "z" else np.array([1, 0])
            )
            back, side = float(rng.uniform(2.0, 3.4)), float(rng.uniform(-0.5, 0.5))
            x = cx + inward[0] * back + (side if door.axis == "z" else 0.0)
            z = cz + inward[1] * back + (side if door.axis == "x" else 0.0)
            if not (room.contains(x, z, 0.3) and world.is_free(x, z, CAMERA_RADIUS)):
                continue
            yaw = _heading(cx - x, cz - z) + math.radians(float(rng.uniform(-8, 8)))
            return np.array([x, -cfg.eye_height, z]), yaw, di, (cx, cz)
        room = world.rooms[int(rng.integers(len(world.rooms)))]
        x, z = (
            float(rng.uniform(room.x0 + 0.5, room.x1 - 0.5)),
            float(rng.uniform(room.z0 + 0.5, room.z1 - 0.5)),
        )
        yaw = float(rng.uniform(-math.pi, math.pi))
        ahead = _free_distance(world, x, z, yaw)
        if not world.is_free(x, z, CAMERA_RADIUS) or ahead < 1.5:
            continue
        if target is Target.wall_ahead and ahead > 3.2:
            continue  # the shot needs a wall close enough to show the bullet hole
        if target is Target.floor_ahead:
            ahead = float(rng.uniform(2.4, 3.6))
            tx, tz = x + math.sin(yaw) * ahead, z + math.cos(yaw) * ahead
            if not world.is_free(tx, tz, 0.6) or not world.line_of_sight((x, z), (tx, tz)):
                continue
            return np.array([x, -cfg.eye_height, z]), yaw, -1, (tx, tz)
        return np.array([x, -cfg.eye_height, z]), yaw, -1, (0.0, 0.0)
    raise PlanRejected("could not place the camera in this world")


def _visible(K: np.ndarray, size: int, rot: np.ndarray, pos: np.ndarray, point: np.ndarray) -> bool:
    cam = rot.T @ (point - pos)
    if cam[2] < 0.4:
        return False
    u, v = (K @ (cam / cam[2]))[:2]
    margin = 0.12 * size
    return margin <= u <= size - margin and margin <= v <= size - margin


def _wall_point(
    world: WorldMap, cfg: SynthConfig, rot: np.ndarray, pos: np.ndarray
) -> tuple[float, float, float] | None:
    """Where the optical axis meets a wall, if at 0.8–4 units and between floor and ceiling."""
    fwd = rot[:, 2]
    horiz = math.hypot(fwd[0], fwd[2])
    yaw = math.atan2(fwd[0], fwd[2])
    dist = _free_distance(world, pos[0], pos[2], yaw, limit=4.5) + CAMERA_RADIUS
    if not 0.8 <= dist <= 4.0:
        return None
    t = dist + 0.02
    y = pos[1] + fwd[1] / horiz * t
    if not -cfg.wall_height + 0.1 < y < -0.1:
        return None
    return pos[0] + math.sin(yaw) * t, y, pos[2] + math.cos(yaw) * t


def plan_shot(
    world: WorldMap,
    cfg: SynthConfig,
    kind: EventKind | None,
    rng: np.random.Generator,
) -> Shot:
    """A camera start, an action track and the event plan for one clip (a multi-turn clip's later turns
    need nothing in view, so they do not change the plan: :func:`~.clip.generate_clip` adds them)."""
    start, yaw0, door, (tx, tz) = _place(world, cfg, kind, rng)
    base = rotation_yaw_pitch(yaw0, 0.0)
    K = intrinsics_from_fov(cfg.size, cfg.size, cfg.fov_deg)
    onset, full = schedule(kind, rng, cfg.frames, cfg.fps) if kind else (cfg.frames, cfg.frames)
    point = np.array([tx, -0.5 if door < 0 else -cfg.wall_height / 2, tz])
    track = [ActionFrame()]
    wall: tuple[float, float, float] | None = None
    target_kind = SPECS[kind].target if kind else Target.none
    weights = np.array([w for _, w in KEY_CHOICES])

    def acceptable(poses: np.ndarray, first: int) -> bool:
        for i in range(first, len(poses)):
            rot, pos = base @ poses[i, :3, :3], start + base @ poses[i, :3, 3]
            if not world.is_free(pos[0], pos[2], CAMERA_RADIUS):
                return False
            if target_kind in (Target.door, Target.floor_ahead):
                ignore = (world.doors[door].ix, world.doors[door].iz) if door >= 0 else None
                if math.hypot(pos[0] - tx, pos[2] - tz) < 1.2 or not _visible(K, cfg.size, rot, pos, point):
                    return False
                if not world.line_of_sight((pos[0], pos[2]), (tx, tz), ignore_cell=ignore):
                    return False
            if (
                target_kind is Target.wall_ahead
                and wall is not None
                and not _visible(K, cfg.size, rot, pos, np.array(wall))
            ):
                return False
        return True

    while len(track) < cfg.frames:
        length = min(int(rng.integers(4, 11)), cfg.frames - len(track))
        chosen = [ActionFrame()] * length  # standing still is always safe
        for attempt in range(8):
            keys = KEY_CHOICES[int(rng.choice(len(KEY_CHOICES), p=weights / weights.sum()))][0]
            # Players often hold a key without touching the mouse, and rarely tilt the view.
            dx = float(rng.normal(0.0, 1.2 if attempt < 4 else 0.5)) if rng.random() < 0.6 else 0.0
            dy = float(rng.normal(0.0, 0.3)) if rng.random() < 0.3 else 0.0
            candidate = [ActionFrame(keys=keys, mouse_dx=dx, mouse_dy=dy)] * length
            poses = integrate_poses(track + candidate, cfg.motion)
            if acceptable(poses, len(track)):
                chosen = candidate
                break
        track += chosen
        if target_kind is Target.wall_ahead and wall is None and len(track) > onset:
            poses = integrate_poses(track, cfg.motion)
            rot, pos = base @ poses[onset, :3, :3], start + base @ poses[onset, :3, 3]
            wall = _wall_point(world, cfg, rot, pos)
            if wall is None:
                raise PlanRejected("no wall in front of the camera at the shot")
            # Frames after the shot must keep the bullet hole in view: re-check the rest.
            track = track[: onset + 1]
    c2w = integrate_poses(track, cfg.motion)
    event = None
    if kind is not None:
        anchor = wall if wall is not None else (float(point[0]), float(point[1]), float(point[2]))
        material = DOOR_MATERIALS[world.doors[door].material] if door >= 0 else ""
        event = EventPlan(kind, onset, full, door=door, point=anchor, door_material=material)
    return Shot(start=start, yaw0=yaw0, actions=track, c2w=c2w, event=event)


class PlanRejected(Exception):
    """This world/plan cannot stage the event (no door, no wall in front at the shot): draw another."""
