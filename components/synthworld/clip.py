"""One labelled SynthWorld clip: world → plan → rendered frames → ground truth."""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
    scene: SceneRecord
    captions: Captions
    event_masks: tuple[np.ndarray, ...]  # per event, in order: (F, H, W) bool region it affected
    interactions: tuple[InteractionCaption, ...]  # per event, in order: one turn each

    @property
    def event(self) -> events.EventPlan | None:
        return self.shot.event

    @property
    def masks(self) -> np.ndarray | None:
        """The first event's masks (None without an event)."""
        return self.event_masks[0] if self.event_masks else None

    @property
    def interaction(self) -> InteractionCaption | None:
        """The first event's caption (None without an event)."""
        return self.interactions[0] if self.interactions else None

    @property
    def events(self) -> tuple[events.EventPlan, ...]:
        """Every event in order: more than one makes a multi-turn clip (one instruction per event)."""
        return self.shot.events


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
        for event in shot.events:  # later turns add to what earlier ones changed
            events.apply(event, state, i)
        out.append(state)
    return out


def render_shot(
    world: WorldMap, shot: Shot, cfg: SynthConfig, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames (F, H, W, 3) uint8 and, per event of the shot in order, its masks (F, H, W) bool."""
    renderer = Renderer(world, cfg)
    frames = np.empty((cfg.frames, cfg.size, cfg.size, 3), np.uint8)
    masks = [np.zeros((cfg.frames, cfg.size, cfg.size), bool) for _ in shot.events]
    for lo in range(0, cfg.frames, RENDER_BATCH):
        span = range(lo, min(lo + RENDER_BATCH, cfg.frames))
        out = renderer.render(frame_states(world, shot, seed, span))
        frames[span.start : span.stop] = out.rgb
        for event, mask in zip(shot.events, masks, strict=True):
            mask[span.start : span.stop] = events.mask(event, out, frame_offset=lo)
    return frames, masks


def render_triggered(clip: Clip, cfg: SynthConfig, triggered: Sequence[bool]) -> np.ndarray:
    """The same shot with only the events marked in ``triggered`` (one flag per event) happening; the
    others never start (their onsets moved past the end)."""
    if all(triggered):
        return clip.frames
    planned = tuple(
        event if on else replace(event, onset=cfg.frames, full=cfg.frames)
        for event, on in zip(clip.events, triggered, strict=True)
    )
    shot = replace(clip.shot, event=planned[0], followups=planned[1:])
    frames, _ = render_shot(clip.world, shot, cfg, clip.seed)
    return frames


def render_turns(clip: Clip, cfg: SynthConfig, turns: int) -> np.ndarray:
    """The same shot with only its first ``turns`` events triggered: ``turns=0`` is the counterfactual
    InterBench's trigger test compares against; in a multi-turn clip, ``turns=k`` is what the video
    would be had turn k+1 never been asked for."""
    return render_triggered(clip, cfg, [i < turns for i in range(len(clip.events))])


def render_without_turn(clip: Clip, cfg: SynthConfig, turn: int) -> np.ndarray:
    """The shot with every event but ``turn`` (0-based) triggered: the video had that turn's state
    never appeared while the later turns still happened (InterBench's persistence counterfactual)."""
    if not 0 <= turn < len(clip.events):
        raise ValueError(f"turn {turn} is outside a clip of {len(clip.events)} event(s)")
    return render_triggered(clip, cfg, [i != turn for i in range(len(clip.events))])


def render_without_event(clip: Clip, cfg: SynthConfig) -> np.ndarray:
    """The same shot with no event triggered: the counterfactual of the trigger test and mask tests."""
    return render_turns(clip, cfg, 0)


def choose_kind(cfg: SynthConfig, rng: np.random.Generator) -> EventKind | None:
    if rng.random() >= cfg.event_probability:
        return None
    return cfg.event_kinds[int(rng.integers(len(cfg.event_kinds)))]


def choose_followups(
    cfg: SynthConfig, kind: EventKind | None, rng: np.random.Generator
) -> tuple[EventKind, ...]:
    """Later turns after ``kind`` (none with probability 1 − ``multi_turn_probability``): one or two
    events from :data:`~.events.FOLLOW_UPS` that the config allows, each a new, compatible state."""
    if kind is None or cfg.max_turns < 2 or rng.random() >= cfg.multi_turn_probability:
        return ()
    chosen: list[EventKind] = []
    for _ in range(int(rng.integers(1, cfg.max_turns))):
        options = [
            k for k in events.FOLLOW_UPS if k in cfg.event_kinds and events.compatible((kind, *chosen), k)
        ]
        if not options:
            break
        chosen.append(options[int(rng.integers(len(options)))])
    return tuple(chosen)


def generate_clip(
    cfg: SynthConfig,
    seed: int,
    *,
    kind: EventKind | None = None,
    any_event: bool = True,
    followups: tuple[EventKind, ...] | None = None,
) -> Clip:
    """Render clip ``seed``. ``kind`` forces the event; with ``any_event`` False and no kind, none.
    ``followups`` forces the later turns of a multi-turn clip (``()``: none); by default they are drawn
    (``cfg.multi_turn_probability``). They follow the first event once it completes, with their kinds
    and onsets drawn from a generator of their own, so the shot and the first event are the ones the
    clip has without them. A follow-up that does not fit in the clip is left out.

    Attempts are drawn from one generator, so the result depends on ``seed`` alone. An event kind
    drawn by chance (not forced) is redrawn every ``REDRAW_EVERY`` failed attempts, so a kind that
    is hard to stage at this size (a bullet hole at 32 px) does not sink the clip.
    """
    rng = np.random.default_rng(seed)
    turn_rng = np.random.default_rng([seed, 2])
    drawn = kind is None and any_event
    if drawn:
        kind = choose_kind(cfg, rng)
    for attempt in range(MAX_ATTEMPTS):
        if drawn and attempt and attempt % REDRAW_EVERY == 0:
            kind = choose_kind(cfg, rng)
        later = choose_followups(cfg, kind, turn_rng) if followups is None else followups
        try:
            world = generate_world(rng, cfg.map_cells)
            shot = plan_shot(world, cfg, kind, rng)
        except (WorldRejected, PlanRejected) as why:
            log.debug("seed %d attempt %d: %s", seed, attempt, why)
            continue
        if shot.event is not None and later:
            turns = events.schedule_followups(later, turn_rng, shot.event.full, cfg.frames, cfg.fps)
            plans = (events.EventPlan(k, *t) for k, t in zip(later, turns, strict=False))  # those that fit
            shot = replace(shot, followups=tuple(plans))
        frames, event_masks = render_shot(world, shot, cfg, seed)
        if any(
            not mask[event.onset :].reshape(cfg.frames - event.onset, -1).any(axis=1).all()
            for event, mask in zip(shot.events, event_masks, strict=True)
        ):
            log.debug("seed %d attempt %d: an event left the view", seed, attempt)
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
            scene=facts,
            captions=scene_captions(facts, shot),
            event_masks=tuple(event_masks),
            interactions=tuple(interaction_caption(e) for e in shot.events),
        )
    raise RuntimeError(f"SynthWorld could not stage a {kind} clip for seed {seed} in {MAX_ATTEMPTS} attempts")
