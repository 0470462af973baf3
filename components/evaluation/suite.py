"""InterBench cases as data files, and the seeded SynthWorld suite that ships with the project.

A suite is a folder::

    suite.json                 {"name", "version", "size", "frames", "fps", "cases": [InterBenchCase, ...]}
    images/<case>.png          the reference image (frame 0)
    truth/<case>.npz           optional ground truth (SynthWorld suites): the event video, the same shot
                               without the event, the per-frame event masks and the event's progress
                               (multi-turn cases: also each turn's masks, progress and counterfactuals)

Users bring their own suite by writing the same ``suite.json`` + PNGs; ``truth/`` is only needed by the
offline SynthWorld judge (the VLM judge reads the instructions and the frames).

A case is what the paper's InterBench gives a model: a reference image, an instruction, a camera
action script (one action per video frame) and a frame count — plus, for scoring, the frame at which
the instruction is issued and its category (environment / character action / entity emergence).
A multi-turn case (category ``multi_turn``) gives several instructions instead, each a :class:`Turn`
with its own frame, kind and category; every turn is judged, and so is whether the state an earlier
turn produced outlasts the later ones (the paper's multi-round interaction).

Suite format versions: 1 (single-turn cases only) and 2 (adds ``turns``); both are read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worldloop.components.evaluation import multi_turn
from worldloop.components.synthworld import Category, Clip, EventKind, SynthConfig, generate_clip
from worldloop.components.synthworld.clip import render_without_event
from worldloop.model.camera.actions import ActionFrame, parse_action

log = logging.getLogger(__name__)

SUITE_VERSION = 2
READ_VERSIONS = (1, 2)  # 1: before multi-turn cases
# How SynthWorld cases are staged from the builder's arguments; a new revision gives the same arguments
# other cases (2: three-turn plans in longer clips), so it is part of a built suite's name (what the
# promotion gate compares) and of every cached suite's folder.
STAGING_REVISION = 2
SUITE_TAG = f"v{SUITE_VERSION}r{STAGING_REVISION}"  # the cache folders' suffix
SUITE_FILE = "suite.json"
MULTI_TURN_EVERY = 5  # the shipped suite: every fifth case is multi-turn (20 %)
GLOBAL_AREA = 0.5  # an event covering at least this fraction of the frame is judged as a global change


class CaseAction(BaseModel):
    """One frame's input: keys as ``w+a`` / ``none`` and mouse motion (the model's ActionFrame)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: str = Field("none", description="Held keys joined by '+', or 'none'.")
    mouse: tuple[float, float] = Field((0.0, 0.0), description="(dx, dy) mouse units in this frame.")

    @field_validator("keys")
    @classmethod
    def _known_keys(cls, keys: str) -> str:
        parse_action(keys)  # raises with the unknown key named
        return keys

    def frame(self) -> ActionFrame:
        return parse_action(self.keys, mouse_dx=self.mouse[0], mouse_dy=self.mouse[1])

    @classmethod
    def of(cls, action: ActionFrame) -> CaseAction:
        return cls(keys=action.label(), mouse=(float(action.mouse_dx), float(action.mouse_dy)))


class CaseCategory(str, Enum):
    """What a case tests: one event of SynthWorld's three categories, or several instructions in turn."""

    environment = Category.environment.value
    character_action = Category.character_action.value
    entity_emergence = Category.entity_emergence.value
    multi_turn = "multi_turn"


class Turn(BaseModel):
    """One instruction of a case: what is asked, the frame it is issued at, and what kind of change it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instruction: str = Field(min_length=1, description="The interaction instruction, e.g. 'open the door'.")
    instruction_frame: int = Field(ge=1, description="Video frame at which the instruction is issued.")
    category: Category = Field(description="The change's category (a turn is never itself multi-turn).")
    kind: str | None = Field(None, description="SynthWorld event kind, when the case comes from SynthWorld.")


class InterBenchCase(BaseModel):
    """One benchmark case (see the module docstring): a single instruction (``instruction`` and
    ``instruction_frame``) or, in a multi-turn case, two or more ``turns`` in frame order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Unique within the suite; names its files.")
    category: CaseCategory
    prompt: str = Field(min_length=1, description="Scene description given with the reference image.")
    instruction: str | None = Field(
        None, min_length=1, description="The interaction instruction, e.g. 'open the door' (single-turn)."
    )
    instruction_frame: int | None = Field(
        None, ge=1, description="Video frame at which the instruction is issued (single-turn)."
    )
    turns: tuple[Turn, ...] = Field(
        (), description="Multi-turn cases: every instruction in frame order (two or more); else empty."
    )
    frames: int = Field(ge=2, description="Video frames to generate, the reference frame included.")
    actions: tuple[CaseAction, ...] = Field(description="One action per frame; action 0 is ignored.")
    kind: str | None = Field(
        None, description="SynthWorld event kind of a single-turn case (a multi-turn case has one per turn)."
    )
    seed: int | None = Field(None, description="SynthWorld seed the case was rendered from.")

    @model_validator(mode="after")
    def _consistent(self) -> InterBenchCase:
        if len(self.actions) != self.frames:
            raise ValueError(f"case {self.id}: {len(self.actions)} actions for {self.frames} frames")
        if self.turns:
            self._check_turns()
        elif self.instruction is None or self.instruction_frame is None:
            raise ValueError(f"case {self.id}: give instruction and instruction_frame, or two or more turns")
        elif self.category is CaseCategory.multi_turn:
            raise ValueError(f"case {self.id}: a multi_turn case lists its instructions in turns")
        for turn in self.instructions():
            if turn.instruction_frame >= self.frames:
                raise ValueError(
                    f"case {self.id}: instruction_frame {turn.instruction_frame} ≥ frames {self.frames}"
                )
        return self

    def _check_turns(self) -> None:
        if len(self.turns) < 2:
            raise ValueError(
                f"case {self.id}: turns needs two or more; one instruction goes in instruction and "
                "instruction_frame"
            )
        if self.instruction is not None or self.instruction_frame is not None or self.kind is not None:
            raise ValueError(
                f"case {self.id}: a multi-turn case keeps its instruction, frame and kind in each turn"
            )
        if self.category is not CaseCategory.multi_turn:
            raise ValueError(
                f"case {self.id}: a case with turns has category multi_turn, not {self.category.value}"
            )
        for n, (before, turn) in enumerate(zip(self.turns, self.turns[1:], strict=False), start=2):
            if turn.instruction_frame <= before.instruction_frame:
                raise ValueError(
                    f"case {self.id}: turn {n} is issued at frame {turn.instruction_frame}, not after "
                    f"turn {n - 1} (frame {before.instruction_frame})"
                )
            if turn.instruction == before.instruction:
                raise ValueError(
                    f"case {self.id}: turn {n} repeats turn {n - 1}'s instruction, which would not recache"
                )

    @property
    def multi_turn(self) -> bool:
        return bool(self.turns)

    def instructions(self) -> tuple[Turn, ...]:
        """Every instruction the case issues, in order: its turns, or its one instruction as a turn."""
        if self.turns:
            return self.turns
        assert self.instruction is not None and self.instruction_frame is not None  # _consistent
        category = Category(self.category.value)
        return (
            Turn(
                instruction=self.instruction,
                instruction_frame=self.instruction_frame,
                category=category,
                kind=self.kind,
            ),
        )

    def windows(self) -> list[tuple[int, int]]:
        """Per turn, the frames [start, stop) it is judged over: from its instruction to the next one's."""
        starts = [t.instruction_frame for t in self.instructions()]
        return list(zip(starts, [*starts[1:], self.frames], strict=True))

    def label(self) -> str:
        """The kinds (or categories) of its turns, e.g. ``open_door`` or ``open_door→night``."""
        return "→".join(t.kind or t.category.value for t in self.instructions())

    def action_frames(self) -> list[ActionFrame]:
        return [a.frame() for a in self.actions]


class Suite(BaseModel):
    """``suite.json``: the cases and the video geometry they were made for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(SUITE_VERSION, description=f"Format version; {READ_VERSIONS} are read.")
    size: int = Field(gt=0, description="Square frame size (pixels) of the reference images.")
    frames: int = Field(ge=2)
    fps: int = Field(16, gt=0)
    cases: tuple[InterBenchCase, ...] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _readable(cls, version: int) -> int:
        if version not in READ_VERSIONS:
            raise ValueError(
                f"suite format version {version} is not one this worldloop reads {READ_VERSIONS}; "
                "upgrade worldloop or rebuild the suite"
            )
        return version

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        ids = [c.id for c in self.cases]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate case ids: {dupes}")
        return self


@dataclass(frozen=True)
class CaseTruth:
    """SynthWorld ground truth of one case (all (F, ...) over the case's video frames)."""

    event: np.ndarray  # (F, H, W, 3) uint8: the shot with the event
    counterfactual: np.ndarray  # (F, H, W, 3) uint8: the same shot, event never triggered
    masks: np.ndarray  # (F, H, W) bool: where the event shows
    progress: np.ndarray  # (F,) float in [0, 1]: 0 before onset, 1 once the end state is reached
    full: int  # first frame with the end state fully reached
    global_event: bool  # the event covers at least half of the frame
    c2w: np.ndarray  # (F, 4, 4) the commanded camera path (OpenCV camera-to-world, frame 0 = identity)
    # Multi-turn cases: one per turn, in order (event/counterfactual/masks/… above are the first turn's,
    # with every turn shown in ``event``); empty for a single-turn case.
    turns: tuple[TurnTruth, ...] = ()


@dataclass(frozen=True)
class TurnTruth:
    """Ground truth of one turn of a multi-turn case (all (F, ...) over the case's video frames). Named
    like :class:`CaseTruth` so a judge measures a turn the way it measures a single-turn case."""

    event: np.ndarray  # (F, H, W, 3) uint8: the shot with this turn and the earlier ones
    counterfactual: np.ndarray  # (F, H, W, 3) uint8: the shot with the earlier turns only
    without: np.ndarray | None  # (F, H, W, 3) uint8: every turn but this one; None for the last turn
    masks: np.ndarray  # (F, H, W) bool: where this turn's change shows
    progress: np.ndarray  # (F,) float in [0, 1]
    full: int  # first frame with this turn's end state fully reached
    global_event: bool


class LoadedSuite:
    """A suite folder on disk: cases, reference images and (optional) ground truth."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / SUITE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.root} is not an InterBench suite: {SUITE_FILE} is missing")
        self.suite = Suite.model_validate_json(path.read_text(encoding="utf-8"))
        missing = [c.id for c in self.suite.cases if not self.image_path(c.id).is_file()]
        if missing:
            raise FileNotFoundError(f"suite {self.root}: reference images missing for cases {missing[:5]}")

    @property
    def cases(self) -> tuple[InterBenchCase, ...]:
        return self.suite.cases

    def image_path(self, case_id: str) -> Path:
        return self.root / "images" / f"{case_id}.png"

    def image(self, case_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        with Image.open(self.image_path(case_id)) as im:
            return np.asarray(im.convert("RGB"))

    def has_truth(self, case_id: str) -> bool:
        return (self.root / "truth" / f"{case_id}.npz").is_file()

    def truth(self, case_id: str) -> CaseTruth:
        path = self.root / "truth" / f"{case_id}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"case {case_id} has no ground truth ({path}); use the VLM judge")
        with np.load(path) as z:
            return truth_from_arrays(z)

    def select(self, limit: int | None) -> list[InterBenchCase]:
        """The first ``limit`` cases in a category-balanced order (all when None)."""
        if limit is None or limit >= len(self.cases):
            return list(self.cases)
        if limit < 1:
            raise ValueError(f"--cases must be ≥ 1, got {limit}")
        return list(_round_robin(self.cases))[:limit]


def truth_from_arrays(z: Mapping[str, np.ndarray]) -> CaseTruth:
    """A case's ground truth from the arrays of its ``truth/<case>.npz``."""
    event, counterfactual = z["event"], z["counterfactual"]
    turns: list[TurnTruth] = []
    if "turn_masks" in z:  # a multi-turn case (multi_turn.turn_truth)
        count, renders, without = len(z["turn_masks"]), z["turn_renders"], z["turn_without"]
        turns = [
            TurnTruth(
                event=renders[k] if k < count - 1 else event,
                counterfactual=renders[k - 1] if k else counterfactual,
                without=without[k] if k < count - 1 else None,
                masks=z["turn_masks"][k],
                progress=z["turn_progress"][k],
                full=int(z["turn_full"][k]),
                global_event=bool(z["turn_global"][k]),
            )
            for k in range(count)
        ]
    return CaseTruth(
        event=event,
        counterfactual=counterfactual,
        masks=z["masks"],
        progress=z["progress"],
        full=int(z["full"]),
        global_event=bool(z["global_event"]),
        c2w=z["c2w"],
        turns=tuple(turns),
    )


def _round_robin(cases: Sequence[InterBenchCase]) -> Iterator[InterBenchCase]:
    by_kind: dict[str, list[InterBenchCase]] = {}
    for case in cases:
        by_kind.setdefault(case.kind or case.category.value, []).append(case)
    queues = list(by_kind.values())
    while any(queues):
        for queue in queues:
            if queue:
                yield queue.pop(0)


def build_synthworld_suite(
    out: str | Path,
    *,
    cases: int = 100,
    size: int = 64,
    frames: int = 33,
    seed: int = 0,
    kinds: Sequence[EventKind] | None = None,
    multi_turn_every: int = MULTI_TURN_EVERY,
) -> LoadedSuite:
    """Render ``cases`` SynthWorld cases into ``out``: single-turn cases of ``kinds`` in turn (so every
    category is covered) and, as every ``multi_turn_every``-th case (0: none), a multi-turn case of
    :data:`multi_turn.PLANS` in turn, its turns at least :func:`multi_turn.min_turn_gap` frames apart.

    Deterministic in its arguments. Each instruction is issued at its event's onset frame, as the event
    starts in the ground truth; the reference image is frame 0 of the shot. A multi-turn case keeps the
    first staging whose every turn and persistence the SynthWorld judge can see (a bullet hole two pixels
    wide on a far wall could not be judged); one that cannot be staged at this clip length (too few frames
    for two turns a block apart) becomes a single-turn case, with a warning.
    """
    if multi_turn_every < 0:
        raise ValueError(f"multi_turn_every must be ≥ 0 (0: no multi-turn cases), got {multi_turn_every}")
    out = Path(out)
    kinds = list(kinds or EventKind)
    plans = [p for p in multi_turn.PLANS if set(p.kinds) <= set(kinds)]
    if multi_turn_every and not plans:
        raise ValueError(
            f"no multi-turn plan uses only the kinds {[k.value for k in kinds]}; pass multi_turn_every=0"
        )
    cfg = SynthConfig(size=size, frames=frames)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    built: list[InterBenchCase] = []
    singles = 0
    for i in range(cases):
        case: InterBenchCase | None = None
        if multi_turn_every and i % multi_turn_every == multi_turn_every - 1:
            plan = plans[(i // multi_turn_every) % len(plans)]
            case = _multi_turn_case(out, cfg, plan, seed=seed, index=i)
        if case is None:
            kind = kinds[singles % len(kinds)]
            singles += 1
            clip = generate_clip(cfg, seed * 1_000_003 + i, kind=kind, followups=())
            case = _write_single_turn_case(out, cfg, clip, index=i)
        built.append(case)
        if (i + 1) % 10 == 0:
            log.info("suite: %d/%d cases", i + 1, cases)
    name = f"synthworld-s{seed}-r{STAGING_REVISION}"
    suite = Suite(name=name, size=size, frames=frames, fps=cfg.fps, cases=tuple(built))
    tmp = out / f".{SUITE_FILE}.tmp"
    tmp.write_text(suite.model_dump_json(indent=1), encoding="utf-8")
    tmp.replace(out / SUITE_FILE)  # the suite exists only once every case file is written
    return LoadedSuite(out)


def _truth_arrays(clip: Clip, cfg: SynthConfig) -> dict[str, np.ndarray]:
    """The first event's ground truth (a single-turn case's all; a multi-turn case's turn 1)."""
    event, masks = clip.event, clip.masks
    assert event is not None and masks is not None  # every suite clip is staged with an event
    full = min(event.full, cfg.frames - 1)
    return {
        "event": clip.frames,
        "counterfactual": render_without_event(clip, cfg),
        "masks": masks,
        "progress": np.array([event.progress(f) for f in range(cfg.frames)], np.float32),
        "c2w": clip.c2w.astype(np.float64),
        "full": np.array(full, np.int64),
        "global_event": np.array(multi_turn.global_change(masks, full, GLOBAL_AREA), np.bool_),
    }


def _write_single_turn_case(out: Path, cfg: SynthConfig, clip: Clip, *, index: int) -> InterBenchCase:
    event = clip.event
    assert event is not None
    case = InterBenchCase(
        id=f"{index:04d}-{event.kind.value}",
        category=CaseCategory(event.spec.category.value),
        prompt=clip.captions.short,
        instruction=event.spec.instruction,
        instruction_frame=max(1, event.onset),
        frames=cfg.frames,
        actions=tuple(CaseAction.of(a) for a in clip.shot.actions),
        kind=event.kind.value,
        seed=clip.seed,
    )
    Image.fromarray(clip.frames[0]).save(out / "images" / f"{case.id}.png")
    arrays: dict[str, Any] = _truth_arrays(clip, cfg)  # Any: numpy's stubs type **kwds as allow_pickle
    np.savez_compressed(out / "truth" / f"{case.id}.npz", **arrays)
    return case


def _multi_turn_case(
    out: Path, cfg: SynthConfig, plan: multi_turn.TurnPlan, *, seed: int, index: int
) -> InterBenchCase | None:
    """Write the first staging of ``plan`` whose every turn (and persistence) the SynthWorld judge can
    see, with all its turns where a clip of the suite's length or a longer one holds them, else fewer
    (:func:`multi_turn.stagings`); None when none of the attempts gives one."""
    gap = multi_turn.min_turn_gap()
    for frames, turns in multi_turn.stagings(cfg.frames, len(plan.kinds), gap):
        case = _stage_multi_turn(out, cfg.model_copy(update={"frames": frames}), plan, turns, seed, index)
        if case is not None:
            return case
    log.warning("suite: case %d: %s does not fit in %d frames; a single turn instead", index,
                "→".join(k.value for k in plan.kinds), cfg.frames)  # fmt: skip
    return None


def _stage_multi_turn(
    out: Path, cfg: SynthConfig, plan: multi_turn.TurnPlan, count: int, seed: int, index: int
) -> InterBenchCase | None:
    """The first judgeable staging of ``plan``'s first ``count`` kinds in ``cfg.frames`` frames, written."""
    from worldloop.components.evaluation.judges.synthworld import judgeable  # the judge imports this module

    gap = multi_turn.min_turn_gap()
    for clip in multi_turn.candidates(cfg, plan, seed=seed, case=index, gap=gap, turns=count):
        turns = tuple(
            Turn(
                instruction=e.spec.instruction,
                instruction_frame=max(1, e.onset),
                category=e.spec.category,
                kind=e.kind.value,
            )
            for e in clip.events
        )
        case = InterBenchCase(
            id=f"{index:04d}-{'.'.join(e.kind.value for e in clip.events)}",
            category=CaseCategory.multi_turn,
            prompt=clip.captions.short,
            turns=turns,
            frames=cfg.frames,
            actions=tuple(CaseAction.of(a) for a in clip.shot.actions),
            seed=clip.seed,
        )
        arrays: dict[str, Any] = _truth_arrays(clip, cfg) | multi_turn.turn_truth(clip, cfg, area=GLOBAL_AREA)
        if not judgeable(case, truth_from_arrays(arrays)):
            log.debug("suite: case %d: seed %d shows a turn too faintly to judge", index, clip.seed)
            continue
        Image.fromarray(clip.frames[0]).save(out / "images" / f"{case.id}.png")
        np.savez_compressed(out / "truth" / f"{case.id}.npz", **arrays)
        return case
    return None


def load_suite(root: str | Path) -> LoadedSuite:
    return LoadedSuite(root)
