"""A stage's data: a weighted mixture of datasets, and the deterministic order it is read in.

A mixture is a list of :class:`DataSource` (``{uri, weight}``), given on the command line as
``--data DIR=0.7 --data s3://bucket/clips=0.3``, in a stage config, or as a ``mixture.json`` file (what
the pipeline's mixing step writes). :class:`ClipOrder` maps a global sample index to one clip:

- the source of sample ``i`` is drawn with the mixture's weights from a generator seeded by
  ``(seed, i // BLOCK)``, and its position in that source is how many earlier samples drew it;
- a source is read epoch by epoch; each epoch visits its shards in a seeded random order and each
  shard's clips in a seeded random order, so reads move through one shard at a time (what keeps a
  small cache effective) and every clip is read once per epoch.

Everything is a function of ``(seed, i)``: rank ``r`` of ``W`` reading its own indices reads samples
no other rank reads, and a run resumed at step ``s`` reads exactly the samples an uninterrupted run
reads from step ``s`` on.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worldloop import storage
from worldloop.data.lineage import ShardReadRecord, SourceLineage
from worldloop.data.shards import INDEX_FILE
from worldloop.data.store import DEFAULT_CACHE_BYTES, ClipStore, LoadedClip
from worldloop.settings import Settings

MIXTURE_FILE = "mixture.json"
TWIN_SUFFIX = "-twin"  # a clip's counterfactual twin is stored as KEY-twin in the same dataset
BLOCK = 1024  # samples per draw of sources


class DataSource(BaseModel):
    """One dataset of a mixture and its sampling weight (relative; the mixture normalises)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(min_length=1, description="A dataset root: a folder or s3:// prefix with dataset.json.")
    weight: float = Field(1.0, gt=0, description="Relative sampling weight.")


class MixtureFile(BaseModel):
    """``mixture.json``: what the pipeline's mixing step writes and a training step reads."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["worldloop-mixture/1"] = "worldloop-mixture/1"
    sources: list[DataSource] = Field(min_length=1)


def parse_source(text: str) -> DataSource:
    """``URI`` or ``URI=WEIGHT`` (the command line's ``--data``)."""
    uri, eq, weight = text.rpartition("=")
    if eq and uri:
        try:
            return DataSource(uri=uri, weight=float(weight))
        except ValueError as exc:
            if "greater than 0" in str(exc):
                raise ValueError(f"--data {text}: the weight must be > 0") from exc
    return DataSource(uri=text)


def write_mixture(folder: str, sources: Sequence[DataSource], *, settings: Settings | None = None) -> str:
    uri = storage.join(folder, MIXTURE_FILE)
    body = MixtureFile(sources=list(sources)).model_dump_json(indent=1).encode()
    storage.write_bytes(uri, body, settings=settings)
    return uri


def resolve_sources(
    data: str | DataSource | Sequence[str | DataSource], *, settings: Settings | None = None
) -> list[DataSource]:
    """The sources ``data`` names: a dataset root, a folder with ``mixture.json`` (expanded), a
    ``URI=WEIGHT`` string, or a list of those (weights of an expanded mixture are multiplied by the
    weight it was given)."""
    items: Sequence[str | DataSource] = [data] if isinstance(data, str | DataSource) else data
    if not items:
        raise ValueError("no training data: give at least one dataset")
    out: list[DataSource] = []
    for item in items:
        source = parse_source(item) if isinstance(item, str) else item
        mixture_uri = storage.join(source.uri, MIXTURE_FILE)
        if not storage.exists(storage.join(source.uri, INDEX_FILE), settings=settings) and storage.exists(
            mixture_uri, settings=settings
        ):
            inner = MixtureFile.model_validate(json.loads(storage.read_bytes(mixture_uri, settings=settings)))
            out += [DataSource(uri=s.uri, weight=s.weight * source.weight) for s in inner.sources]
        else:
            out.append(source)
    return out


@dataclass(frozen=True)
class ClipRef:
    """A clip of a mixture: its source and its (shard, clip) in that source's index."""

    source: int
    shard: int
    clip: int


class Mixture:
    """The datasets of ``sources``, each a :class:`ClipStore` with its own cache budget."""

    def __init__(
        self,
        sources: Sequence[DataSource],
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        settings: Settings | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a mixture needs at least one source")
        self.sources = list(sources)
        self.stores = [ClipStore(s.uri, cache_bytes=cache_bytes, settings=settings) for s in self.sources]

    @classmethod
    def open(
        cls,
        data: str | DataSource | Sequence[str | DataSource],
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        settings: Settings | None = None,
    ) -> Mixture:
        return cls(resolve_sources(data, settings=settings), cache_bytes=cache_bytes, settings=settings)

    @property
    def clips(self) -> int:
        return sum(s.index.clips for s in self.stores)

    def load(self, ref: ClipRef) -> LoadedClip:
        return self.stores[ref.source].load(ref.shard, ref.clip)

    def twin(self, ref: ClipRef) -> ClipRef | None:
        """The counterfactual twin of clip ``ref`` (the same shot with no event and no instruction,
        stored beside it as ``KEY`` + :data:`TWIN_SUFFIX`), or None when its source has none."""
        store = self.stores[ref.source]
        found = store.find(store.entry(ref.shard, ref.clip).key + TWIN_SUFFIX)
        return None if found is None else ClipRef(ref.source, *found)

    def first(self, *, min_frames: int = 1) -> LoadedClip:
        """The first clip (index order) with ``min_frames`` frames, for a stage's sample video."""
        for s, store in enumerate(self.stores):
            found = store.clips(min_frames=min_frames)
            if found:
                return self.load(ClipRef(s, *found[0]))
        raise ValueError(f"no clip has {min_frames} frames")

    def fov_deg(self) -> float:
        """The median horizontal field of view over every clip (from the index, nothing decoded)."""
        return float(
            statistics.median(
                2 * math.degrees(math.atan(c.width / (2 * c.focal_x)))
                for store in self.stores
                for shard in store.index.shards
                for c in shard.clips
            )
        )

    def order(self, *, frames: int, seed: int) -> ClipOrder:
        return ClipOrder(self, frames=frames, seed=seed)

    def lineage(self) -> list[SourceLineage]:
        """Per source: its URI, weight, kind, size, and the shards read so far with their sha256."""
        return [
            SourceLineage(
                uri=source.uri,
                weight=source.weight,
                kind=store.index.kind,
                clips=store.index.clips,
                shards_read=[
                    ShardReadRecord(name=r.name, sha256=r.sha256, clips_read=r.clips_read)
                    for r in store.shards_read()
                ],
            )
            for source, store in zip(self.sources, self.stores, strict=True)
        ]


class ClipOrder:
    """Which clip sample ``index`` reads, for windows of ``frames`` frames (shorter clips are left out;
    a source with none is left out of the mixture)."""

    def __init__(self, mixture: Mixture, *, frames: int, seed: int) -> None:
        self.seed = seed
        eligible = [store.clips(min_frames=frames) for store in mixture.stores]
        self.sources = [s for s, e in enumerate(eligible) if e]
        if not self.sources:
            longest = max(c.frames for store in mixture.stores for sh in store.index.shards for c in sh.clips)
            raise ValueError(f"no clip has {frames} frames (longest: {longest}); use a shorter curriculum")
        self.eligible = [eligible[s] for s in self.sources]
        weights = np.array([mixture.sources[s].weight for s in self.sources], np.float64)
        self.weights = weights / weights.sum()
        self._prefix: list[np.ndarray] = [np.zeros(len(self.sources), np.int64)]

    def locate(self, index: int) -> ClipRef:
        if index < 0:
            raise ValueError(f"sample index must be ≥ 0, got {index}")
        slot, position = self._choose(index)
        clips = self.eligible[slot]
        epoch, within = divmod(position, len(clips))
        shard, clip = self._epoch(slot, epoch)[within]
        return ClipRef(self.sources[slot], shard, clip)

    def _choose(self, index: int) -> tuple[int, int]:
        if len(self.sources) == 1:
            return 0, index
        block, offset = divmod(index, BLOCK)
        while len(self._prefix) <= block:
            done = len(self._prefix) - 1
            counts = np.bincount(self._draws(done), minlength=len(self.sources))
            self._prefix.append(self._prefix[-1] + counts)
        draws = self._draws(block)
        slot = int(draws[offset])
        return slot, int(self._prefix[block][slot] + np.count_nonzero(draws[:offset] == slot))

    @lru_cache(maxsize=4)  # noqa: B019 - one order per phase, a few blocks at a time
    def _draws(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0x4D4958, block])
        return rng.choice(len(self.sources), size=BLOCK, p=self.weights)

    @lru_cache(maxsize=8)  # noqa: B019
    def _epoch(self, slot: int, epoch: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, 0x45504F, self.sources[slot], epoch])
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for shard, clip in self.eligible[slot]:
            by_shard.setdefault(shard, []).append((shard, clip))
        order: list[tuple[int, int]] = []
        for shard in rng.permutation(sorted(by_shard)):
            clips = by_shard[int(shard)]
            order += [clips[i] for i in rng.permutation(len(clips))]
        return order
