"""Lineage: per training stage, the datasets of its mixture with their weights, and the shards it
actually read (name, sha256, how many clip loads), and the frozen teacher distillation scores against —
written as ``lineage.json`` into every checkpoint and carried from stage to stage, so a registered
version says exactly what data and which real score made it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LINEAGE_FILE = "lineage.json"


class ShardReadRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    sha256: str
    clips_read: int = Field(ge=0)


class SourceLineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str
    weight: float
    kind: str
    clips: int = Field(description="Clips in the dataset.")
    shards_read: list[ShardReadRecord]


class StageLineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    sources: list[SourceLineage]


class TeacherLineage(BaseModel):
    """The real score of stages 3–4: the frozen bidirectional model distillation started from."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(description="The stage that trained it (instruction: the stage-2 model).")
    source: str = Field(description="The checkpoint it was first loaded from, as given.")
    weights_sha256: str = Field(description="sha256 of its tensors (names, dtypes, shapes, bytes).")


class Lineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["worldloop-lineage/1"] = "worldloop-lineage/1"
    stages: list[StageLineage] = Field(default_factory=list)
    teacher: TeacherLineage | None = None

    def with_stage(self, stage: StageLineage) -> Lineage:
        """These stages with ``stage`` appended (replacing an entry of the same stage: a resume)."""
        return self.model_copy(
            update={"stages": [s for s in self.stages if s.stage != stage.stage] + [stage]}
        )

    def without_stage(self, name: str) -> Lineage:
        return self.model_copy(update={"stages": [s for s in self.stages if s.stage != name]})

    def stage(self, name: str) -> StageLineage | None:
        return next((s for s in self.stages if s.stage == name), None)


def merge_sources(*parts: Iterable[SourceLineage]) -> list[SourceLineage]:
    """One list from several readers' (ranks', or before and after a resume): per source URI, the
    union of the shards read, their clip loads summed."""
    merged: dict[str, SourceLineage] = {}
    reads: dict[str, dict[str, ShardReadRecord]] = {}
    for part in parts:
        for source in part:
            merged.setdefault(source.uri, source)
            by_name = reads.setdefault(source.uri, {})
            for r in source.shards_read:
                old = by_name.get(r.name)
                if old is not None and old.sha256 != r.sha256:
                    raise ValueError(f"{source.uri}: shard {r.name} was read with two different sha256")
                count = r.clips_read + (old.clips_read if old else 0)
                by_name[r.name] = ShardReadRecord(name=r.name, sha256=r.sha256, clips_read=count)
    return [
        s.model_copy(update={"shards_read": sorted(reads[uri].values(), key=lambda r: r.name)})
        for uri, s in merged.items()
    ]


def read_lineage(folder: str | Path) -> Lineage | None:
    """The lineage written into a checkpoint folder, or None (checkpoints from before lineage)."""
    path = Path(folder) / LINEAGE_FILE
    if not path.is_file():
        return None
    return Lineage.model_validate_json(path.read_text(encoding="utf-8"))
