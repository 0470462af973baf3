"""Screen-space layers: falling snow/rain and the first-person hands (torch, pistol, muzzle flash)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from worldloop.components.synthworld.state import TAG_FLASH, TAG_GUN, TAG_PARTICLE, TAG_TORCH, FrameState

MAX_PARTICLES_PER_PIXEL = 1 / 24


@lru_cache(maxsize=8)
def _screen(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates (u across, v down), each (n, n)."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    v, u = np.meshgrid(c, c, indexing="ij")
    return u, v


@lru_cache(maxsize=64)
def _particle_field(seed: int, count: int) -> np.ndarray:
    """(count, 4): x0, y0, fall speed, drift — fixed per clip so particles move continuously."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.random(count),
            rng.random(count),
            rng.uniform(0.02, 0.05, count),
            rng.uniform(-0.006, 0.006, count),
        ],
        1,
    )


def draw_particles(state: FrameState, color: np.ndarray, tags: np.ndarray) -> None:
    density = max(state.snowfall, state.rain)
    if density <= 0:
        return
    n = color.shape[0]
    total = int(n * n * MAX_PARTICLES_PER_PIXEL)
    field = _particle_field(state.particle_seed, total)[: int(total * density)]
    f = state.frame_index
    rain = state.rain >= state.snowfall
    speed = field[:, 2] * (3.0 if rain else 1.0)
    xs = (((field[:, 0] + field[:, 3] * f) % 1.0) * n).astype(np.int64)
    ys = (((field[:, 1] + speed * f) % 1.0) * n).astype(np.int64)
    length = max(2, n // 24) if rain else max(1, n // 64)
    for dy in range(length):
        yy = np.clip(ys + dy, 0, n - 1)
        for dx in range(1 if rain else length):
            xx = np.clip(xs + dx, 0, n - 1)
            tint = np.float32(0.55) if rain else np.float32(0.95)
            mix = 0.5 if rain else 0.9
            color[yy, xx] = color[yy, xx] * (1 - mix) + tint * mix
            tags[yy, xx] = TAG_PARTICLE


def _segment_distance(
    u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    ab = np.array(b) - np.array(a)
    t = np.clip(((u - a[0]) * ab[0] + (v - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    return np.hypot(u - (a[0] + t * ab[0]), v - (a[1] + t * ab[1]))


def draw_overlays(state: FrameState, color: np.ndarray, tags: np.ndarray) -> None:
    if state.torch <= 0 and not state.gun:
        return
    u, v = _screen(color.shape[0])
    lit = max(1.0 - 0.85 * state.night + 0.5 * state.torch, 0.15)
    if state.torch > 0:
        off = (1.0 - state.torch) * 0.3  # the torch rises into view while being drawn
        stick = _segment_distance(u, v, (0.80, 1.05 + off), (0.71, 0.72 + off)) < 0.03
        hand = ((u - 0.79) / 0.07) ** 2 + ((v - 0.93 - off) / 0.06) ** 2 < 1
        flicker = 1.0 + 0.15 * np.sin(state.frame_index * 1.9) * np.cos(state.frame_index * 0.7)
        r2 = ((u - 0.705) / (0.045 * flicker)) ** 2 + ((v - 0.64 - off) / (0.085 * flicker)) ** 2
        flame = r2 < 1
        color[stick] = np.array([0.42, 0.26, 0.12], np.float32) * lit
        color[hand] = np.array([0.85, 0.66, 0.52], np.float32) * lit
        core = np.clip(1.0 - r2, 0.0, 1.0)[flame, None]
        color[flame] = (
            np.array([1.0, 0.55, 0.1], np.float32) * (1 - core)
            + np.array([1.0, 0.95, 0.6], np.float32) * core
        )
        tags[stick | hand | flame] = TAG_TORCH
    if state.gun:
        body = ((u > 0.52) & (u < 0.60) & (v > 0.70) & (v < 0.84)) | ((u > 0.54) & (u < 0.62) & (v >= 0.84))
        hand = ((u - 0.58) / 0.07) ** 2 + ((v - 0.95) / 0.06) ** 2 < 1
        color[body] = np.array([0.22, 0.22, 0.25], np.float32) * lit
        color[hand & ~body] = np.array([0.85, 0.66, 0.52], np.float32) * lit
        tags[body | hand] = TAG_GUN
        if state.muzzle_flash > 0:
            ang = np.arctan2(v - 0.66, u - 0.56)
            radius = 0.07 * state.muzzle_flash * (0.75 + 0.25 * np.cos(6 * ang))
            flash = np.hypot(u - 0.56, v - 0.66) < radius
            color[flash] = np.array([1.0, 0.9, 0.45], np.float32)
            tags[flash] = TAG_FLASH
