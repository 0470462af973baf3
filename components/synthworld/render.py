"""Renders batches of frames of a :class:`WorldMap` with exact pinhole geometry.

Per pixel: ray d = R·K⁻¹·[u+0.5, v+0.5, 1] (the convention of the Plücker embedding, DESIGN §5.2);
its horizontal angle picks the wall hit from :func:`cast_walls`; the floor/ceiling planes are
intersected analytically; billboards, decals, particles and first-person overlays follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldloop.components.synthworld.config import SynthConfig
from worldloop.components.synthworld.overlays import draw_overlays, draw_particles
from worldloop.components.synthworld.raycast import SIDE_DOOR, SIDE_X, cast_walls
from worldloop.components.synthworld.state import (
    TAG_CEILING,
    TAG_DOOR,
    TAG_FLOOR,
    TAG_SPRITE,
    TAG_WALL,
    FrameState,
    SpriteInstance,
)
from worldloop.components.synthworld.textures import TEX, TextureBank, texture_bank
from worldloop.components.synthworld.world import WorldMap
from worldloop.model.camera import intrinsics_from_fov

TORCH_RGB = np.array([1.0, 0.72, 0.42], np.float32)
GLOW_RGB = np.array([1.0, 0.62, 0.28], np.float32)


@dataclass(frozen=True)
class RenderOutput:
    rgb: np.ndarray  # (B, H, W, 3) uint8
    tags: np.ndarray  # (B, H, W) int16, see state.TAG_*
    door_aperture: np.ndarray  # (B, H, W) int16: door whose opening the pixel looks through, −1 if none
    depth: np.ndarray  # (B, H, W) float32 camera z-depth


class Renderer:
    def __init__(self, world: WorldMap, cfg: SynthConfig, bank: TextureBank | None = None) -> None:
        self.world, self.cfg = world, cfg
        self.bank = bank or texture_bank()
        n = cfg.size
        self.K = intrinsics_from_fov(n, n, cfg.fov_deg).astype(np.float32)
        v, u = np.meshgrid(
            np.arange(n, dtype=np.float32) + 0.5, np.arange(n, dtype=np.float32) + 0.5, indexing="ij"
        )
        pix = np.stack([u, v, np.ones_like(u)], -1)
        self.rays_cam = pix @ np.linalg.inv(self.K).T  # (H, W, 3), z = 1
        # One atlas so every pixel's albedo is a single gather: walls, floors, ceiling, doors.
        b = self.bank
        self.atlas = np.concatenate([b.walls, b.floors, b.ceiling[None], b.doors]).astype(np.float32)
        self.floor_base = len(b.walls)
        self.ceiling_id = self.floor_base + len(b.floors)
        self.door_base = self.ceiling_id + 1
        self.door_material = np.array([d.material for d in world.doors] or [0], np.int64)
        self.snow_noise = np.random.default_rng(7).random((64, 64)).astype(np.float32)

    def render(self, states: list[FrameState]) -> RenderOutput:
        cfg, n = self.cfg, self.cfg.size
        bsz = len(states)
        rot = np.stack([s.rotation for s in states]).astype(np.float32)  # (B, 3, 3)
        pos = np.stack([s.position for s in states]).astype(np.float32)  # (B, 3)
        doors = np.stack([s.door_open for s in states]) if self.world.doors else np.zeros((bsz, 0))

        # 1. Rays in the map frame and the wall each one meets horizontally.
        d = np.einsum("bij,hwj->bhwi", rot, self.rays_cam)  # (B, H, W, 3)
        dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
        horiz = np.maximum(np.hypot(dx, dz), 1e-6)
        num = cfg.angular_samples
        theta = np.arctan2(dx, dz) % (2 * np.pi)
        k = (theta * (num / (2 * np.pi))).astype(np.int64).reshape(bsz, -1) % num  # (B, H*W)
        hits = cast_walls(self.world, pos[:, 0], pos[:, 2], doors, num)

        def pick(a: np.ndarray) -> np.ndarray:
            return np.take_along_axis(a, k, axis=1).reshape(bsz, n, n)

        wall_t, wall_u, wall_mat, wall_side = (
            pick(hits.dist),
            pick(hits.u),
            pick(hits.material),
            pick(hits.side),
        )
        cross_t, cross_id = pick(hits.door_cross), pick(hits.door_cross_id)

        # 2. Floor (y = 0) and ceiling (y = −wall_height) planes; y points down.
        py = pos[:, 1, None, None]
        slope = dy / horiz
        with np.errstate(divide="ignore", invalid="ignore"):
            t_plane = np.where(
                slope > 0, -py / slope, np.where(slope < 0, (-cfg.wall_height - py) / slope, np.inf)
            )
        sees_wall = wall_t <= t_plane
        t_h = np.where(sees_wall, wall_t, t_plane)
        depth = (t_h / horiz).astype(np.float32)  # camera z-depth: rays_cam has z = 1
        pts = pos[:, None, None, :] + depth[..., None] * d  # (B, H, W, 3)
        is_floor = ~sees_wall & (slope > 0)
        aperture = np.where((cross_id >= 0) & (cross_t <= t_h + 1e-4), cross_id, -1).astype(np.int16)

        # 3. Albedo through the atlas.
        height = np.clip(-pts[..., 1], 0.0, cfg.wall_height)
        is_door = wall_mat < 0
        door_id = np.where(is_door, -1 - wall_mat, 0)
        wall_tex = np.where(is_door, self.door_base + self.door_material[door_id], wall_mat)
        wall_v = np.where(is_door, 1.0 - height / cfg.wall_height, 1.0 - (height % 1.0))
        gx = np.clip(np.floor(pts[..., 0]).astype(np.int64), 0, self.world.cells.shape[1] - 1)
        gz = np.clip(np.floor(pts[..., 2]).astype(np.int64), 0, self.world.cells.shape[0] - 1)
        plane_tex = np.where(is_floor, self.floor_base + self.world.floor_material[gz, gx], self.ceiling_id)
        tex = np.where(sees_wall, wall_tex, plane_tex)
        tu = np.where(sees_wall, wall_u, pts[..., 0] % 1.0)
        tv = np.where(sees_wall, wall_v, pts[..., 2] % 1.0)
        ti = lambda c: np.clip((c * TEX).astype(np.int64), 0, TEX - 1)  # noqa: E731
        albedo = self.atlas[tex, ti(tv), ti(tu)]  # (B, H, W, 3)

        tags = np.where(
            sees_wall,
            np.where(is_door, TAG_DOOR + door_id, TAG_WALL),
            np.where(is_floor, TAG_FLOOR, TAG_CEILING),
        )
        tags = tags.astype(np.int16)
        albedo = self._weather_floor(albedo, pts, is_floor, states)

        # 4. Light: ambient × distance falloff × face shading, plus the torch and explosion lights.
        dist = depth * np.linalg.norm(d, axis=-1)
        shade = np.where(
            sees_wall,
            np.where(wall_side == SIDE_X, 0.8, np.where(wall_side == SIDE_DOOR, 0.95, 1.0)),
            np.where(is_floor, 0.9, 0.65),
        )
        light = self._lighting(states, dist, pts, shade.astype(np.float32))
        color = albedo * light

        # 5. Decals, billboards, particles and the player's hands, frame by frame.
        for b, state in enumerate(states):
            self._decals(state, pts[b], sees_wall[b], is_floor[b], color[b], tags[b])
            for sprite in state.sprites:
                self._sprite(sprite, state, d[b], depth[b], color[b], tags[b])
            draw_particles(state, color[b], tags[b])
            draw_overlays(state, color[b], tags[b])
        rgb = (np.clip(color, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return RenderOutput(rgb=rgb, tags=tags, door_aperture=aperture, depth=depth)

    def _weather_floor(
        self, albedo: np.ndarray, pts: np.ndarray, is_floor: np.ndarray, states: list[FrameState]
    ) -> np.ndarray:
        cover = np.array([s.snow_cover for s in states], np.float32)
        rain = np.array([s.rain for s in states], np.float32)
        if not cover.any() and not rain.any():
            return albedo
        nz = (np.floor(pts[..., 2] * 6).astype(np.int64)) % 64
        nx = (np.floor(pts[..., 0] * 6).astype(np.int64)) % 64
        snowy = is_floor & (self.snow_noise[nz, nx] < cover[:, None, None])
        albedo = np.where(snowy[..., None], np.float32(0.93), albedo)
        wet = (is_floor & (rain[:, None, None] > 0))[..., None]
        return np.where(
            wet, albedo * (1.0 - 0.35 * rain[:, None, None, None]) + 0.04 * rain[:, None, None, None], albedo
        )

    def _lighting(
        self, states: list[FrameState], dist: np.ndarray, pts: np.ndarray, shade: np.ndarray
    ) -> np.ndarray:
        night = np.array([s.night for s in states], np.float32)[:, None, None, None]
        torch = np.array([s.torch for s in states], np.float32)[:, None, None, None]
        fog = 1.0 / (1.0 + (dist / self.cfg.fog_distance) ** 2)
        ambient = (1.0 - 0.88 * night) * np.array([1.0, 1.0, 1.0], np.float32) - night * np.array(
            [0.05, 0.02, -0.08], np.float32
        )
        light = ambient * (shade * fog)[..., None]
        if torch.any():
            light = light + torch * TORCH_RGB * (0.9 / (1.0 + (dist / 1.6) ** 2))[..., None]
        for b, s in enumerate(states):
            if s.glow is not None and s.glow.intensity > 0:
                g = np.array([s.glow.x, s.glow.y, s.glow.z], np.float32)
                r2 = ((pts[b] - g) ** 2).sum(-1)
                light[b] += s.glow.intensity * GLOW_RGB * (1.6 / (1.0 + r2 / 1.5))[..., None]
        return light.astype(np.float32)

    def _decals(
        self,
        state: FrameState,
        pts: np.ndarray,
        wall: np.ndarray,
        floor: np.ndarray,
        color: np.ndarray,
        tags: np.ndarray,
    ) -> None:
        for decal in state.decals:
            c = np.array([decal.x, decal.y, decal.z], np.float32)
            if decal.on_floor:
                inside = floor & (((pts[..., 0] - c[0]) ** 2 + (pts[..., 2] - c[2]) ** 2) < decal.radius**2)
            else:
                inside = wall & (((pts - c) ** 2).sum(-1) < decal.radius**2)
            if not inside.any():
                continue
            color[inside] = (
                color[inside] * 0.25 + 0.75 * np.asarray(decal.color, np.float32) * color[inside].mean()
            )
            tags[inside] = decal.tag

    def _sprite(
        self,
        sp: SpriteInstance,
        state: FrameState,
        d: np.ndarray,
        depth: np.ndarray,
        color: np.ndarray,
        tags: np.ndarray,
    ) -> None:
        """Billboard facing the camera horizontally; exact ray–plane intersection per pixel."""
        p = state.position.astype(np.float32)
        to = np.array([sp.x - p[0], sp.z - p[2]], np.float32)
        dist_h = float(np.hypot(*to))
        if dist_h < 0.15 or sp.alpha <= 0:
            return
        normal = to / dist_h  # horizontal normal (x, z) pointing away from the camera
        tangent = np.array([normal[1], -normal[0]], np.float32)  # camera's right along the plane
        denom = d[..., 0] * normal[0] + d[..., 2] * normal[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(denom > 1e-6, dist_h / denom, np.inf)
        ax = (p[0] + lam * d[..., 0] - sp.x) * tangent[0] + (p[2] + lam * d[..., 2] - sp.z) * tangent[1]
        up = -(p[1] + lam * d[..., 1]) - sp.base  # height above the sprite's base
        su = ax / sp.width + 0.5
        sv = 1.0 - up / sp.height
        inside = (su >= 0) & (su < 1) & (sv >= 0) & (sv < 1) & (lam < depth)
        if not inside.any():
            return
        img = self.bank.sprites[sp.image]
        size = img.shape[0]
        texel = img[
            np.clip((sv[inside] * size).astype(np.int64), 0, size - 1),
            np.clip((su[inside] * size).astype(np.int64), 0, size - 1),
        ]
        alpha = texel[:, 3] * sp.alpha
        if sp.emissive > 0:
            rgb = texel[:, :3] * sp.emissive
        else:
            fog = 1.0 / (1.0 + (lam[inside] / self.cfg.fog_distance) ** 2)
            ambient = max(1.0 - 0.88 * state.night + 0.6 * state.torch, 0.12)
            rgb = texel[:, :3] * (fog * ambient)[:, None]
        ys, xs = np.nonzero(inside)
        color[ys, xs] = color[ys, xs] * (1 - alpha[:, None]) + rgb * alpha[:, None]
        # Any visible contribution counts for the tag (a fading-in entity is already "affected");
        # only mostly-opaque texels occlude what is drawn later.
        seen, solid = alpha > 0.02, alpha >= 0.5
        tags[ys[seen], xs[seen]] = TAG_SPRITE + sp.tag
        depth[ys[solid], xs[solid]] = lam[inside][solid]
