"""Procedural level: a grid of rooms joined by corridors, with sliding doors and props.

Map frame (OpenCV-like, as the camera): x and z horizontal, y down; the floor is y = 0 and the
ceiling y = −wall_height. Cell (iz, ix) covers x ∈ [ix, ix+1), z ∈ [iz, iz+1).
``cells`` holds 0 for free space, a wall material id (> 0), or ``DOOR`` for a door cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from worldloop.components.synthworld.textures import (
    DOOR_MATERIALS,
    FLOOR_MATERIALS,
    PROP_KINDS,
    WALL_MATERIALS,
)

DOOR = -1
CORRIDOR_WALL = 2  # stone
CORRIDOR_FLOOR = 2  # flagstone
ROOM_STYLES = ("hall", "storeroom", "chapel", "workshop", "armory", "library")


class WorldRejected(RuntimeError):
    """This draw of the world is unusable (rooms did not fit): draw another from the same generator."""


@dataclass(frozen=True)
class Room:
    x0: int
    z0: int
    x1: int  # exclusive
    z1: int  # exclusive
    style: str
    wall_material: int
    floor_material: int

    def contains(self, x: float, z: float, margin: float = 0.0) -> bool:
        return self.x0 + margin <= x < self.x1 - margin and self.z0 + margin <= z < self.z1 - margin

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.z0 + self.z1) / 2.0


@dataclass(frozen=True)
class Door:
    """A sliding door in cell (iz, ix). ``axis`` 'z': the door plane is z = iz + 0.5 (corridor runs
    along z); 'x': the plane is x = ix + 0.5. Opening slides the leaf towards +x / +z."""

    ix: int
    iz: int
    axis: str
    material: int
    room: int

    @property
    def centre(self) -> tuple[float, float]:
        return self.ix + 0.5, self.iz + 0.5


@dataclass(frozen=True)
class Prop:
    kind: str
    x: float
    z: float
    width: float
    height: float
    radius: float  # collision radius

    @property
    def sprite(self) -> int:
        return PROP_KINDS.index(self.kind)


@dataclass
class WorldMap:
    cells: np.ndarray  # (G, G) int16
    floor_material: np.ndarray  # (G, G) int16, valid on free cells
    door_index: np.ndarray  # (G, G) int16, -1 where no door
    rooms: list[Room]
    doors: list[Door]
    props: list[Prop] = field(default_factory=list)

    def is_free(self, x: float, z: float, radius: float = 0.2) -> bool:
        """True if a disc of ``radius`` at (x, z) touches no wall, closed door or prop."""
        g = self.cells.shape[0]
        for ox in (-radius, radius):
            for oz in (-radius, radius):
                ix, iz = int(np.floor(x + ox)), int(np.floor(z + oz))
                if not (0 <= ix < g and 0 <= iz < g) or self.cells[iz, ix] != 0:
                    return False
        return all((p.x - x) ** 2 + (p.z - z) ** 2 >= (p.radius + radius) ** 2 for p in self.props)

    def line_of_sight(
        self, a: tuple[float, float], b: tuple[float, float], *, ignore_cell: tuple[int, int] | None = None
    ) -> bool:
        """No wall cell on the segment a→b (sampled at 1/8 cell), except ``ignore_cell`` (ix, iz)."""
        n = max(2, int(np.hypot(b[0] - a[0], b[1] - a[1]) * 8))
        for t in np.linspace(0.0, 1.0, n):
            ix, iz = int(np.floor(a[0] + t * (b[0] - a[0]))), int(np.floor(a[1] + t * (b[1] - a[1])))
            if (ix, iz) != ignore_cell and self.cells[iz, ix] != 0:
                return False
        return True

    def room_at(self, x: float, z: float) -> int | None:
        for i, room in enumerate(self.rooms):
            if room.contains(x, z):
                return i
        return None


def _place_rooms(rng: np.random.Generator, g: int) -> list[Room]:
    rooms: list[Room] = []
    for _ in range(200):
        w, d = int(rng.integers(4, 8)), int(rng.integers(4, 8))
        x0, z0 = int(rng.integers(1, g - w - 1)), int(rng.integers(1, g - d - 1))
        if any(x0 < r.x1 + 2 and r.x0 < x0 + w + 2 and z0 < r.z1 + 2 and r.z0 < z0 + d + 2 for r in rooms):
            continue
        rooms.append(
            Room(
                x0,
                z0,
                x0 + w,
                z0 + d,
                style=ROOM_STYLES[int(rng.integers(len(ROOM_STYLES)))],
                wall_material=int(rng.integers(1, len(WALL_MATERIALS) + 1)),
                floor_material=int(rng.integers(len(FLOOR_MATERIALS))),
            )
        )
        if len(rooms) >= max(3, g // 5):
            break
    if len(rooms) < 2:
        raise WorldRejected("map too small to place two rooms this time; a larger map_cells fails less")
    return rooms


def _carve_corridor(free: np.ndarray, a: tuple[int, int], b: tuple[int, int], x_first: bool) -> None:
    (ax, az), (bx, bz) = a, b
    corner = (bx, az) if x_first else (ax, bz)
    for (sx, sz), (ex, ez) in ((a, corner), (corner, b)):
        for x in range(min(sx, ex), max(sx, ex) + 1):
            for z in range(min(sz, ez), max(sz, ez) + 1):
                free[z, x] = True


def _door_cells(
    free: np.ndarray, room_mask: np.ndarray, rooms: list[Room]
) -> list[tuple[int, int, str, int]]:
    """Corridor cells right outside a room whose two side neighbours are walls: a door frame."""
    found = []
    for ri, r in enumerate(rooms):
        ring = [(x, r.z0 - 1, "z") for x in range(r.x0, r.x1)] + [(x, r.z1, "z") for x in range(r.x0, r.x1)]
        ring += [(r.x0 - 1, z, "x") for z in range(r.z0, r.z1)] + [(r.x1, z, "x") for z in range(r.z0, r.z1)]
        for x, z, axis in ring:
            if not free[z, x] or room_mask[z, x]:
                continue
            sides = ((x - 1, z), (x + 1, z)) if axis == "z" else ((x, z - 1), (x, z + 1))
            if all(not free[sz, sx] for sx, sz in sides):
                found.append((x, z, axis, ri))
    return found


def generate_world(rng: np.random.Generator, map_cells: int) -> WorldMap:
    g = map_cells
    rooms = _place_rooms(rng, g)
    free = np.zeros((g, g), bool)
    room_mask = np.zeros((g, g), bool)
    owner = np.full((g, g), -1, np.int16)
    for i, r in enumerate(rooms):
        free[r.z0 : r.z1, r.x0 : r.x1] = True
        room_mask[r.z0 : r.z1, r.x0 : r.x1] = True
        owner[max(r.z0 - 1, 0) : r.z1 + 1, max(r.x0 - 1, 0) : r.x1 + 1] = i
    order = sorted(range(len(rooms)), key=lambda i: rooms[i].centre)
    for a, b in zip(order, order[1:], strict=False):
        ca = tuple(int(c) for c in rooms[a].centre)
        cb = tuple(int(c) for c in rooms[b].centre)
        _carve_corridor(free, ca, cb, x_first=bool(rng.integers(2)))  # type: ignore[arg-type]
    free[0, :] = free[-1, :] = free[:, 0] = free[:, -1] = False

    cells = np.zeros((g, g), np.int16)
    floor = np.full((g, g), CORRIDOR_FLOOR, np.int16)
    for r in rooms:
        floor[r.z0 : r.z1, r.x0 : r.x1] = r.floor_material
    walls = ~free
    cells[walls] = CORRIDOR_WALL
    for i, r in enumerate(rooms):
        region = (owner == i) & walls
        cells[region] = r.wall_material

    doors: list[Door] = []
    door_index = np.full((g, g), -1, np.int16)
    for x, z, axis, ri in _door_cells(free, room_mask, rooms):
        if door_index[max(z - 1, 0) : z + 2, max(x - 1, 0) : x + 2].max() >= 0:
            continue  # keep doors apart
        door_index[z, x] = len(doors)
        cells[z, x] = DOOR
        doors.append(Door(x, z, axis, material=int(rng.integers(len(DOOR_MATERIALS))), room=ri))

    world = WorldMap(cells=cells, floor_material=floor, door_index=door_index, rooms=rooms, doors=doors)
    world.props = _place_props(rng, world)
    return world


def _place_props(rng: np.random.Generator, world: WorldMap) -> list[Prop]:
    sizes = {
        "crate": (0.5, 0.45, 0.25),
        "barrel": (0.45, 0.55, 0.22),
        "pillar": (0.35, 1.2, 0.18),
        "plant": (0.45, 0.6, 0.2),
    }
    props: list[Prop] = []
    for r in world.rooms:
        for _ in range(int(rng.integers(0, 3))):
            kind = PROP_KINDS[int(rng.integers(len(PROP_KINDS)))]
            x = float(rng.uniform(r.x0 + 0.6, r.x1 - 0.6))
            z = float(rng.uniform(r.z0 + 0.6, r.z1 - 0.6))
            # Keep the middle of the room and door approaches clear for walking and events.
            cx, cz = r.centre
            near_door = any(abs(d.ix + 0.5 - x) + abs(d.iz + 0.5 - z) < 2.0 for d in world.doors)
            if near_door or (abs(x - cx) < 1.2 and abs(z - cz) < 1.2):
                continue
            w, h, rad = sizes[kind]
            props.append(Prop(kind, x, z, w, h, rad))
    return props
