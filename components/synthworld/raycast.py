"""Horizontal wall casting: a vectorised grid DDA over many frames × angles at once.

The world is 2.5-D (vertical walls from floor to ceiling), so for a pixel ray only its horizontal
direction decides which wall it meets. We cast ``N`` horizontal rays per frame covering 360° and the
renderer looks each pixel up by its horizontal angle; the floor/ceiling test then decides whether the
pixel sees the wall or a plane in front of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldloop.components.synthworld.world import WorldMap

SIDE_X, SIDE_Z, SIDE_DOOR = 0, 1, 2


@dataclass(frozen=True)
class WallHits:
    """Per (frame, angle) results, each (B, N)."""

    dist: np.ndarray  # horizontal distance to the wall/door hit, float32
    u: np.ndarray  # texture coordinate along the wall, [0, 1)
    material: np.ndarray  # wall material id (> 0), or −1 − door id for a door leaf
    side: np.ndarray  # SIDE_X / SIDE_Z / SIDE_DOOR (shading, decals)
    door_cross: np.ndarray  # horizontal distance at which the ray crosses the first door plane (inf if none)
    door_cross_id: np.ndarray  # that door's index, −1 if none


def angles_for(num: int) -> np.ndarray:
    """Ray angles (radians, about +y from +z towards +x): bin k is centred at (k + 0.5)·2π/num."""
    return ((np.arange(num, dtype=np.float64) + 0.5) * (2 * np.pi / num)).astype(np.float64)


def cast_walls(world: WorldMap, px: np.ndarray, pz: np.ndarray, door_open: np.ndarray, num: int) -> WallHits:
    """Cast ``num`` rays from each of the B positions (px, pz); ``door_open`` (B, D) in [0, 1]."""
    b = px.shape[0]
    ang = angles_for(num)
    total = b * num
    frame = np.repeat(np.arange(b), num)
    dx = np.tile(np.sin(ang), b)
    dz = np.tile(np.cos(ang), b)
    ox, oz = px[frame].astype(np.float64), pz[frame].astype(np.float64)
    mx, mz = np.floor(ox).astype(np.int64), np.floor(oz).astype(np.int64)
    with np.errstate(divide="ignore"):
        ddx, ddz = np.abs(1.0 / dx), np.abs(1.0 / dz)
    sx, sz = np.where(dx < 0, -1, 1), np.where(dz < 0, -1, 1)
    side_x = np.where(dx < 0, (ox - mx) * ddx, (mx + 1 - ox) * ddx)
    side_z = np.where(dz < 0, (oz - mz) * ddz, (mz + 1 - oz) * ddz)

    dist = np.full(total, np.inf)
    u = np.zeros(total)
    material = np.full(total, 1, np.int32)
    side = np.zeros(total, np.int8)
    cross = np.full(total, np.inf)
    cross_id = np.full(total, -1, np.int32)
    door_axis_z = np.array([d.axis == "z" for d in world.doors], bool)
    open_flat = door_open.reshape(b, -1) if world.doors else np.zeros((b, 0))
    g = world.cells.shape[0]

    active = np.arange(total)
    for _ in range(4 * g):
        if active.size == 0:
            break
        step_x = side_x[active] < side_z[active]
        t = np.where(step_x, side_x[active], side_z[active])
        mx[active] += np.where(step_x, sx[active], 0)
        mz[active] += np.where(step_x, 0, sz[active])
        side_x[active] += np.where(step_x, ddx[active], 0.0)
        side_z[active] += np.where(step_x, 0.0, ddz[active])
        cx, cz = np.clip(mx[active], 0, g - 1), np.clip(mz[active], 0, g - 1)
        cell = world.cells[cz, cx]
        outside = (mx[active] < 0) | (mx[active] >= g) | (mz[active] < 0) | (mz[active] >= g)

        # 1. Walls: the ray entered a solid cell at distance t through an x- or z-face.
        wall = (cell > 0) | outside
        hit = active[wall]
        dist[hit] = t[wall]
        side[hit] = np.where(step_x[wall], SIDE_X, SIDE_Z)
        material[hit] = np.where(outside[wall], CORRIDOR_FALLBACK, cell[wall])
        along = np.where(step_x[wall], oz[hit] + t[wall] * dz[hit], ox[hit] + t[wall] * dx[hit])
        u[hit] = along - np.floor(along)

        # 2. Doors: the leaf lies on the cell's mid-plane and slides open towards +along.
        is_door = (cell == -1) & ~outside
        blocked = np.zeros(active.size, bool)
        if is_door.any():
            di = active[is_door]
            door = world.door_index[cz[is_door], cx[is_door]].astype(np.int64)
            on_z = door_axis_z[door]
            with np.errstate(divide="ignore", invalid="ignore"):
                t_mid = np.where(on_z, (mz[di] + 0.5 - oz[di]) / dz[di], (mx[di] + 0.5 - ox[di]) / dx[di])
            along = np.where(on_z, ox[di] + t_mid * dx[di] - mx[di], oz[di] + t_mid * dz[di] - mz[di])
            inside = (t_mid > 0) & (along >= 0) & (along < 1)
            first = inside & ~np.isfinite(cross[di])
            cross[di[first]] = t_mid[first]
            cross_id[di[first]] = door[first]
            opened = open_flat[frame[di], door]
            leaf = inside & (along >= opened)
            hit = di[leaf]
            dist[hit] = t_mid[leaf]
            side[hit] = SIDE_DOOR
            material[hit] = -1 - door[leaf]
            u[hit] = (along - opened)[leaf]
            blocked[np.flatnonzero(is_door)[leaf]] = True
        active = active[~wall & ~blocked]

    shape = (b, num)
    return WallHits(
        dist=dist.reshape(shape).astype(np.float32),
        u=u.reshape(shape).astype(np.float32),
        material=material.reshape(shape),
        side=side.reshape(shape),
        door_cross=cross.reshape(shape).astype(np.float32),
        door_cross_id=cross_id.reshape(shape),
    )


CORRIDOR_FALLBACK = 2  # material shown if a ray ever leaves the map (the border is solid, so rare)
