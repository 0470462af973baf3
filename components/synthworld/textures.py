"""Procedural textures (walls, floors, doors) and sprite images, all float32 RGB(A) in [0, 1].

Drawn once per process from a fixed seed: the look of SynthWorld is part of its ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TEX = 32  # texture edge in texels
SPRITE = 48  # sprite image edge in texels

WALL_MATERIALS = ("brick", "stone", "wood", "metal", "plaster", "tile")
FLOOR_MATERIALS = ("checker", "planks", "flagstone", "carpet")
DOOR_MATERIALS = ("wooden door", "steel door")
PROP_KINDS = ("crate", "barrel", "pillar", "plant")
ENTITY_KINDS = ("dragon", "vehicle", "person", "fireball", "smoke")


def _noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
    return u / n, v / n  # texel centres not needed: textures are sampled nearest


def _brick(
    rng: np.random.Generator, base: tuple[float, float, float], rows: int, mortar: float
) -> np.ndarray:
    u, v = _grid(TEX)
    row = np.floor(v * rows)
    shifted = (u + 0.5 * (row % 2) / 2) % 1.0
    joint = (np.abs((v * rows) % 1.0) < 0.12) | (np.abs((shifted * 4) % 1.0) < 0.08)
    tex = np.ones((TEX, TEX, 3), np.float32) * np.asarray(base, np.float32)
    tex *= 1.0 + _noise(rng, (TEX, TEX, 1), 0.06)
    tex[joint] = mortar
    return tex


def _planks(rng: np.random.Generator, base: tuple[float, float, float], horizontal: bool) -> np.ndarray:
    u, v = _grid(TEX)
    across = v if horizontal else u
    along = u if horizontal else v
    board = np.floor(across * 4)
    tone = 1.0 + 0.12 * np.sin(board * 2.7)
    grain = 0.05 * np.sin(along * 40 + board * 3)
    tex = np.asarray(base, np.float32) * (tone + grain)[..., None]
    tex[(across * 4) % 1.0 < 0.07] *= 0.45
    return tex * (1.0 + _noise(rng, (TEX, TEX, 1), 0.03))


def _panels(rng: np.random.Generator, base: tuple[float, float, float]) -> np.ndarray:
    u, v = _grid(TEX)
    tex = np.ones((TEX, TEX, 3), np.float32) * np.asarray(base, np.float32)
    edge = ((u * 2) % 1.0 < 0.06) | ((v * 2) % 1.0 < 0.06)
    rivet = (((u * 2) % 1.0 - 0.15) ** 2 + ((v * 2) % 1.0 - 0.15) ** 2) < 0.003
    tex[edge] *= 0.55
    tex[rivet] = 0.85
    return tex * (1.0 + _noise(rng, (TEX, TEX, 1), 0.02))


def _checker(rng: np.random.Generator, a: tuple[float, ...], b: tuple[float, ...], n: int) -> np.ndarray:
    u, v = _grid(TEX)
    odd = (np.floor(u * n) + np.floor(v * n)) % 2 == 1
    tex = np.where(odd[..., None], np.asarray(a, np.float32), np.asarray(b, np.float32))
    return tex * (1.0 + _noise(rng, (TEX, TEX, 1), 0.03))


def _door(rng: np.random.Generator, base: tuple[float, float, float], steel: bool) -> np.ndarray:
    u, v = _grid(TEX)
    tex = _panels(rng, base) if steel else _planks(rng, base, horizontal=False)
    frame = (u < 0.06) | (u > 0.94) | (v < 0.05)
    tex[frame] *= 0.5
    knob = ((u - 0.8) ** 2 + (v - 0.55) ** 2) < 0.004
    tex[knob] = (0.9, 0.8, 0.3)
    return tex


@dataclass(frozen=True)
class TextureBank:
    """``walls`` (n, TEX, TEX, 3) indexed by material id (id 0 unused: empty), ``floors``, ``ceiling``,
    ``doors`` and ``sprites`` (n, SPRITE, SPRITE, 4) indexed like the name tuples above."""

    walls: np.ndarray
    floors: np.ndarray
    ceiling: np.ndarray
    doors: np.ndarray
    sprites: np.ndarray


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _sprite_images(rng: np.random.Generator) -> np.ndarray:
    """Sprites in image coordinates: u across, v down (v = 1 is the floor contact line)."""
    u, v = _grid(SPRITE)
    out = np.zeros((len(PROP_KINDS) + len(ENTITY_KINDS), SPRITE, SPRITE, 4), np.float32)

    def paint(i: int, mask: np.ndarray, rgb: tuple[float, float, float]) -> None:
        out[i][mask] = (*rgb, 1.0)

    # props
    paint(0, (u > 0.15) & (u < 0.85) & (v > 0.35), (0.55, 0.38, 0.2))
    paint(
        0,
        (u > 0.15) & (u < 0.85) & (v > 0.35) & ((np.abs(u - v + 0.35) < 0.05) | (v < 0.4)),
        (0.35, 0.22, 0.1),
    )
    paint(1, (u > 0.25) & (u < 0.75) & (v > 0.3), (0.35, 0.45, 0.3))
    paint(
        1,
        (u > 0.25) & (u < 0.75) & (v > 0.3) & ((np.abs(v - 0.45) < 0.03) | (np.abs(v - 0.85) < 0.03)),
        (0.2, 0.2, 0.2),
    )
    paint(2, (u > 0.35) & (u < 0.65), (0.75, 0.72, 0.65))
    paint(2, ((u > 0.3) & (u < 0.7)) & ((v < 0.06) | (v > 0.94)), (0.6, 0.58, 0.52))
    paint(3, (u > 0.4) & (u < 0.6) & (v > 0.75), (0.55, 0.3, 0.15))
    paint(3, _ellipse(u, v, 0.5, 0.5, 0.3, 0.3), (0.15, 0.55, 0.2))
    # entities
    d = len(PROP_KINDS)
    paint(d, _ellipse(u, v, 0.5, 0.62, 0.32, 0.18), (0.2, 0.55, 0.15))  # dragon body
    paint(
        d,
        _ellipse(u, v, 0.82, 0.38, 0.1, 0.09) | ((np.abs(u - 0.72) < 0.05) & (v > 0.38) & (v < 0.6)),
        (0.2, 0.55, 0.15),
    )
    paint(d, (v < 0.55) & (v > 0.15) & (np.abs(u - 0.45) < (0.55 - v) * 0.9), (0.45, 0.12, 0.1))  # wings
    paint(d, ((np.abs(u - 0.35) < 0.04) | (np.abs(u - 0.62) < 0.04)) & (v > 0.7), (0.15, 0.4, 0.1))
    paint(d, _ellipse(u, v, 0.86, 0.36, 0.025, 0.025), (1.0, 0.9, 0.1))
    paint(d + 1, (v > 0.45) & (v < 0.85) & (u > 0.05) & (u < 0.95), (0.75, 0.1, 0.1))  # car body
    paint(d + 1, (v > 0.28) & (v < 0.5) & (u > 0.25) & (u < 0.75), (0.6, 0.08, 0.08))
    paint(d + 1, (v > 0.32) & (v < 0.47) & (u > 0.3) & (u < 0.7), (0.55, 0.75, 0.9))
    paint(
        d + 1,
        _ellipse(u, v, 0.25, 0.86, 0.1, 0.12) | _ellipse(u, v, 0.75, 0.86, 0.1, 0.12),
        (0.08, 0.08, 0.08),
    )
    paint(d + 2, _ellipse(u, v, 0.5, 0.12, 0.1, 0.1), (0.9, 0.72, 0.58))  # person head
    paint(d + 2, (v > 0.22) & (v < 0.6) & (np.abs(u - 0.5) < 0.17), (0.2, 0.35, 0.75))
    paint(d + 2, (v >= 0.6) & (np.abs(u - 0.5) < 0.15) & (np.abs(u - 0.5) > 0.02), (0.25, 0.25, 0.3))
    paint(
        d + 2,
        (v > 0.24) & (v < 0.55) & (np.abs(u - 0.5) > 0.19) & (np.abs(u - 0.5) < 0.25),
        (0.9, 0.72, 0.58),
    )
    r = np.sqrt((u - 0.5) ** 2 + (v - 0.5) ** 2)
    fire = r < 0.48
    out[d + 3][fire] = np.stack(
        [
            np.ones_like(r),
            np.clip(1.1 - 1.6 * r, 0.2, 1.0),
            np.clip(0.6 - 1.8 * r, 0.0, 1.0),
            np.ones_like(r),
        ],
        -1,
    )[fire]
    smoke = r < 0.46
    grey = 0.35 + 0.1 * np.sin(u * 19) * np.cos(v * 17) + _noise(rng, r.shape, 0.03)
    out[d + 4][smoke] = np.stack([grey, grey, grey, np.ones_like(r)], -1)[smoke]
    return np.clip(out, 0.0, 1.0)


@lru_cache(maxsize=1)
def texture_bank() -> TextureBank:
    rng = np.random.default_rng(20251124)
    walls = np.stack(
        [
            np.zeros((TEX, TEX, 3), np.float32),  # id 0 = empty, never sampled
            _brick(rng, (0.62, 0.27, 0.2), rows=8, mortar=0.75),
            _brick(rng, (0.5, 0.5, 0.52), rows=4, mortar=0.32),
            _planks(rng, (0.58, 0.4, 0.22), horizontal=True),
            _panels(rng, (0.42, 0.5, 0.6)),
            np.clip(
                np.full((TEX, TEX, 3), (0.85, 0.8, 0.68), np.float32) + _noise(rng, (TEX, TEX, 1), 0.04), 0, 1
            ),
            _checker(rng, (0.3, 0.6, 0.5), (0.85, 0.9, 0.88), 4),
        ]
    )
    floors = np.stack(
        [
            _checker(rng, (0.2, 0.2, 0.22), (0.8, 0.8, 0.78), 2),
            _planks(rng, (0.5, 0.34, 0.2), horizontal=False),
            _brick(rng, (0.45, 0.43, 0.4), rows=2, mortar=0.25),
            np.clip(
                np.full((TEX, TEX, 3), (0.55, 0.12, 0.14), np.float32) + _noise(rng, (TEX, TEX, 1), 0.03),
                0,
                1,
            ),
        ]
    )
    ceiling = _panels(rng, (0.32, 0.32, 0.34))
    doors = np.stack([_door(rng, (0.5, 0.3, 0.15), steel=False), _door(rng, (0.45, 0.48, 0.52), steel=True)])
    return TextureBank(
        walls=np.clip(walls, 0, 1),
        floors=np.clip(floors, 0, 1),
        ceiling=np.clip(ceiling, 0, 1),
        doors=np.clip(doors, 0, 1),
        sprites=_sprite_images(rng),
    )
