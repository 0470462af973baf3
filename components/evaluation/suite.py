"""InterBench cases as data files, and the seeded SynthWorld suite that ships with the project.

A suite is a folder::

    suite.json                 {"name", "version", "size", "frames", "fps", "cases": [InterBenchCase, ...]}
    images/<case>.png          the reference image (frame 0)
    truth/<case>.npz           optional ground truth (SynthWorld suites): the event video, the same shot
                               without the event, the per-frame event masks and the event's progress

Users bring their own suite by writing the same ``suite.json`` + PNGs; ``truth/`` is only needed by the
offline SynthWorld judge (the VLM judge reads the instruction and the frames).

A case is what the paper's InterBench gives a model: a reference image, an instruction, a camera
action script (one action per video frame) and a frame count — plus, for scoring, the frame at which
the instruction is issued and its category (environment / character action / entity emergence).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worldloop.components.synthworld import Category, EventKind, SynthConfig, generate_clip
from worldloop.components.synthworld.clip import render_without_event
from worldloop.model.camera.actions import ActionFrame, parse_action

log = logging.getLogger(__name__)

SUITE_VERSION = 1
SUITE_FILE = "suite.json"
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


class InterBenchCase(BaseModel):
    """One benchmark case (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Unique within the suite; names its files.")
    category: Category
    prompt: str = Field(min_length=1, description="Scene description given with the reference image.")
    instruction: str = Field(min_length=1, description="The interaction instruction, e.g. 'open the door'.")
    instruction_frame: int = Field(ge=1, description="Video frame at which the instruction is issued.")
    frames: int = Field(ge=2, description="Video frames to generate, the reference frame included.")
    actions: tuple[CaseAction, ...] = Field(description="One action per frame; action 0 is ignored.")
    kind: str | None = Field(None, description="SynthWorld event kind, when the case comes from SynthWorld.")
    seed: int | None = Field(None, description="SynthWorld seed the case was rendered from.")

    @model_validator(mode="after")
    def _consistent(self) -> InterBenchCase:
        if len(self.actions) != self.frames:
            raise ValueError(f"case {self.id}: {len(self.actions)} actions for {self.frames} frames")
        if self.instruction_frame >= self.frames:
            raise ValueError(
                f"case {self.id}: instruction_frame {self.instruction_frame} ≥ frames {self.frames}"
            )
        return self

    def action_frames(self) -> list[ActionFrame]:
        return [a.frame() for a in self.actions]


class Suite(BaseModel):
    """``suite.json``: the cases and the video geometry they were made for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = SUITE_VERSION
    size: int = Field(gt=0, description="Square frame size (pixels) of the reference images.")
    frames: int = Field(ge=2)
    fps: int = Field(16, gt=0)
    cases: tuple[InterBenchCase, ...] = Field(min_length=1)

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
            return CaseTruth(
                event=z["event"],
                counterfactual=z["counterfactual"],
                masks=z["masks"],
                progress=z["progress"],
                full=int(z["full"]),
                global_event=bool(z["global_event"]),
                c2w=z["c2w"],
            )

    def select(self, limit: int | None) -> list[InterBenchCase]:
        """The first ``limit`` cases in a category-balanced order (all when None)."""
        if limit is None or limit >= len(self.cases):
            return list(self.cases)
        if limit < 1:
            raise ValueError(f"--cases must be ≥ 1, got {limit}")
        return list(_round_robin(self.cases))[:limit]


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
) -> LoadedSuite:
    """Render ``cases`` SynthWorld cases (kinds in turn, so every category is covered) into ``out``.

    Deterministic in its arguments. The instruction is issued at the event's onset frame, as the event
    starts in the ground truth; the reference image is frame 0 of the shot.
    """
    out = Path(out)
    kinds = list(kinds or EventKind)
    cfg = SynthConfig(size=size, frames=frames)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    built: list[InterBenchCase] = []
    for i in range(cases):
        kind = kinds[i % len(kinds)]
        clip_seed = seed * 1_000_003 + i
        clip = generate_clip(cfg, clip_seed, kind=kind, followups=())
        event, masks = clip.event, clip.masks
        assert event is not None and masks is not None and clip.interaction is not None
        case = InterBenchCase(
            id=f"{i:04d}-{kind.value}",
            category=event.spec.category,
            prompt=clip.captions.short,
            instruction=event.spec.instruction,
            instruction_frame=max(1, event.onset),
            frames=frames,
            actions=tuple(CaseAction.of(a) for a in clip.shot.actions),
            kind=kind.value,
            seed=clip_seed,
        )
        Image.fromarray(clip.frames[0]).save(out / "images" / f"{case.id}.png")
        np.savez_compressed(
            out / "truth" / f"{case.id}.npz",
            event=clip.frames,
            counterfactual=render_without_event(clip, cfg),
            masks=masks,
            progress=np.array([event.progress(f) for f in range(frames)], np.float32),
            c2w=clip.c2w.astype(np.float64),
            full=np.int64(min(event.full, frames - 1)),
            # Whole-frame events (weather, night) by what they touch, not by category: an explosion
            # is an environment event but a local one.
            global_event=np.bool_(masks[min(event.full, frames - 1) :].mean() >= GLOBAL_AREA),
        )
        built.append(case)
        if (i + 1) % 10 == 0:
            log.info("suite: %d/%d cases", i + 1, cases)
    suite = Suite(name=f"synthworld-s{seed}", size=size, frames=frames, fps=cfg.fps, cases=tuple(built))
    tmp = out / f".{SUITE_FILE}.tmp"
    tmp.write_text(suite.model_dump_json(indent=1), encoding="utf-8")
    tmp.replace(out / SUITE_FILE)  # the suite exists only once every case file is written
    return LoadedSuite(out)


def load_suite(root: str | Path) -> LoadedSuite:
    return LoadedSuite(root)
