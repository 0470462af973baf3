"""The training-data format and its reader (foundation: numpy, no torch).

One format for every dataset — SynthWorld's labelled clips and curated clips from anyone's videos:
WebDataset tar shards holding ``KEY.mp4`` + ``KEY.json`` (:class:`ClipMeta`) per clip, indexed by
``dataset.json`` (:mod:`worldloop.data.shards`); read clip by clip with flat memory
(:class:`ClipStore`); mixed by weight in a deterministic, resumable order (:class:`Mixture`).
"""

from worldloop.data.lineage import (
    LINEAGE_FILE,
    Lineage,
    SourceLineage,
    StageLineage,
    TeacherLineage,
    merge_sources,
    read_lineage,
)
from worldloop.data.mixture import (
    TWIN_SUFFIX,
    ClipOrder,
    ClipRef,
    DataSource,
    Mixture,
    parse_source,
    resolve_sources,
    write_mixture,
)
from worldloop.data.schema import ActionRecord, CameraTrack, Captions, ClipEvent, ClipMeta, InteractionCaption
from worldloop.data.shards import (
    INDEX_FILE,
    ClipPayload,
    DatasetIndex,
    ShardEntry,
    pack_masks,
    read_index,
    shard_path,
    unpack_masks,
    write_index,
    write_shard,
)
from worldloop.data.store import ClipStore, DataIntegrityError, LoadedClip

__all__ = [
    "LINEAGE_FILE",
    "Lineage",
    "SourceLineage",
    "StageLineage",
    "TWIN_SUFFIX",
    "TeacherLineage",
    "merge_sources",
    "read_lineage",
    "INDEX_FILE",
    "ActionRecord",
    "CameraTrack",
    "Captions",
    "ClipEvent",
    "ClipMeta",
    "ClipOrder",
    "ClipPayload",
    "ClipRef",
    "ClipStore",
    "DataIntegrityError",
    "DataSource",
    "DatasetIndex",
    "InteractionCaption",
    "LoadedClip",
    "Mixture",
    "ShardEntry",
    "pack_masks",
    "parse_source",
    "read_index",
    "resolve_sources",
    "shard_path",
    "unpack_masks",
    "write_index",
    "write_mixture",
    "write_shard",
]
