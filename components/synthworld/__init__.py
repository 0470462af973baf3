"""SynthWorld: a seeded first-person 3-D world with interaction events and exact ground truth
(DESIGN.md §4). ``generate_clip`` renders one clip; ``write_dataset``/``write_raw`` write folders."""

from worldloop.components.synthworld.clip import Clip, generate_clip
from worldloop.components.synthworld.config import SynthConfig
from worldloop.components.synthworld.events import Category, EventKind
from worldloop.components.synthworld.raw import Defect, RawTruth, write_raw
from worldloop.components.synthworld.schema import ClipRecord
from worldloop.components.synthworld.writer import load_masks, write_dataset

__all__ = [
    "Category",
    "Clip",
    "ClipRecord",
    "Defect",
    "EventKind",
    "RawTruth",
    "SynthConfig",
    "generate_clip",
    "load_masks",
    "write_dataset",
    "write_raw",
]
