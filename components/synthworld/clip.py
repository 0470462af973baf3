"""One labelled SynthWorld clip: world → plan → rendered frames → ground truth."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from worldloop.components.synthworld import events
from worldloop.components.synthworld.captions import interaction_caption, scene_captions, scene_facts
from worldloop.components.synthworld.config import SynthConfig
from worldloop.components.synthworld.director import PlanRejected, Shot, plan_shot
from worldloop.components.synthworld.events import EventKind
from worldloop.components.synthworld.render import Renderer
from worldloop.components.synthworld.schema import SceneRecord
from worldloop.components.synthworld.state import FrameState
from worldloop.components.synthworld.world import WorldMap, WorldRejected, generate_world
from worldloop.data import Captions, InteractionCaption
from worldloop.model.camera import intrinsics_from_fov

log = logging.getLogger(__name__)
RENDER_BATCH = 16  # frames rendered per vectorised call (bounds memory at large sizes)
MAX_ATTEMPTS = 16
REDRAW_EVERY = 4


@dataclass(frozen=True)
class Clip:
    seed: int
    world: WorldMap
    frames: np.ndarray  # (F, H, W, 3) uint8
    intrinsics: np.ndarray  # (F, 3, 3)
    c2w: np.ndarray  # (F, 4, 4), OpenCV, frame 0 = identity
    shot: Shot
    masks: np.ndarray | None  # (F, H, W) bool affected region, None without an event
    scene: SceneRecord
    captions: Captions
    interaction: InteractionCaption | None

    @property
    def event(self) -> events.EventPlan | None:
        return self.shot.event


def frame_states(world: WorldMap, shot: Shot, seed: int, frames: range) -> list[FrameState]:
    out = []
    for i in frames:
        rot, pos = shot.map_pose(i)
        state = FrameState(
            rotation=rot,
            position=pos,
            door_open=np.zeros(len(world.doors)),
            frame_index=i,
            particle_seed=seed,
        )
        if shot.event is not None:
            events.apply(shot.event, state, i)
        out.append(state)
    return out


def render_shot(
    world: WorldMap, shot: Shot, cfg: SynthConfig, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames (F, H, W, 3) uint8 and, with an event, its masks (F, H, W) bool."""
    renderer = Renderer(world, cfg)
    frames = np.empty((cfg.frames, cfg.size, cfg.size, 3), np.uint8)
    masks = np.zeros((cfg.frames, cfg.size, cfg.size), bool) if shot.event else None
    for lo in range(0, cfg.frames, RENDER_BATCH):
        span = range(lo, min(lo + RENDER_BATCH, cfg.frames))
        out = renderer.render(frame_states(world, shot, seed, span))
        frames[span.start : span.stop] = out.rgb
        if masks is not None and shot.event is not None:
            masks[span.start : span.stop] = events.mask(shot.event, out, frame_offset=lo)
    return frames, masks


def render_without_event(clip: Clip, cfg: SynthConfig) -> np.ndarray:
    """The same shot with the event never triggered (its onset moved past the end): the
    counterfactual that InterBench's trigger test and the mask tests compare against."""
    if clip.event is None:
        return clip.frames
    never = replace(clip.event, onset=cfg.frames, full=cfg.frames)
    frames, _ = render_shot(clip.world, replace(clip.shot, event=never), cfg, clip.seed)
    return frames


def choose_kind(cfg: SynthConfig, rng: np.random.Generator) -> EventKind | None:
    if rng.random() >= cfg.event_probability:
        return None
    return cfg.event_kinds[int(rng.integers(len(cfg.event_kinds)))]


def generate_clip(
    cfg: SynthConfig, seed: int, *, kind: EventKind | None = None, any_event: bool = True
) -> Clip:
    """Render clip ``seed``. ``kind`` forces the event; with ``any_event`` False and no kind, none.

    Attempts are drawn from one generator, so the result depends on ``seed`` alone. An event kind
    drawn by chance (not forced) is redrawn every ``REDRAW_EVERY`` failed attempts, so a kind that
    is hard to stage at this size (a bullet hole at 32 px) does not sink the clip.
    """
    rng = np.random.default_rng(seed)
    drawn = kind is None and any_event
    if drawn:
        kind = choose_kind(cfg, rng)
    for attempt in range(MAX_ATTEMPTS):
        if drawn and attempt and attempt % REDRAW_EVERY == 0:
            kind = choose_kind(cfg, rng)
        try:
            world = generate_world(rng, cfg.map_cells)
            shot = plan_shot(world, cfg, kind, rng)
        except (WorldRejected, PlanRejected) as why:
            log.debug("seed %d attempt %d: %s", seed, attempt, why)
            continue
        frames, masks = render_shot(world, shot, cfg, seed)
        if shot.event is not None and masks is not None:
            after = masks[shot.event.onset :].reshape(cfg.frames - shot.event.onset, -1).any(axis=1)
            if not after.all():
                log.debug("seed %d attempt %d: event left the view", seed, attempt)
                continue
        facts = scene_facts(world, shot)
        K = intrinsics_from_fov(cfg.size, cfg.size, cfg.fov_deg)
        return Clip(
            seed=seed,
            world=world,
            frames=frames,
            intrinsics=np.repeat(K[None], cfg.frames, 0),
            c2w=shot.c2w,
            shot=shot,
            masks=masks,
            scene=facts,
            captions=scene_captions(facts, shot),
            interaction=interaction_caption(shot.event) if shot.event else None,
        )
    raise RuntimeError(f"SynthWorld could not stage a {kind} clip for seed {seed} in {MAX_ATTEMPTS} attempts")
