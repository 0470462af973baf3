"""Writes labelled clips: ``NAME.mp4``, ``NAME.json`` (ClipRecord), ``NAME.masks.npz`` (the first
event's; a multi-turn clip's later events have ``NAME.masks-K.npz``) and ``index.jsonl``. A clip's JSON
is written last, so a present JSON means a complete clip and a re-run skips it (resume after a kill).

The same clips are then packed in the training-data format (:mod:`worldloop.data`): ``shards/*.tar``
with each clip's MP4, its first event's masks and :class:`~worldloop.data.ClipMeta` (exact camera, the
keys held, every event with its caption and instruction), and ``dataset.json`` — what training reads.
The loose files stay for evaluation, which looks clips up by name."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from worldloop.components.synthworld.clip import Clip, generate_clip, render_without_event
from worldloop.components.synthworld.config import SynthConfig
from worldloop.components.synthworld.schema import ClipRecord, EventRecord
from worldloop.data import (
    TWIN_SUFFIX,
    ActionRecord,
    CameraTrack,
    ClipEvent,
    ClipMeta,
    ClipPayload,
    pack_masks,
    shard_path,
    unpack_masks,
)
from worldloop.data import write_index as write_data_index
from worldloop.data import write_shard as write_data_shard
from worldloop.video import encode_mp4

INDEX = "index.jsonl"
SHARD_CLIPS = 8  # clips per shard of the packed dataset


def clip_seed(seed: int, index: int) -> int:
    """Independent, reproducible per-clip seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def clip_name(index: int) -> str:
    return f"clip_{index:05d}"


def atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def mask_file(name: str, event: int) -> str:
    """The loose masks file of event ``event`` (0: the first, also packed in the shards)."""
    return f"{name}.masks.npz" if event == 0 else f"{name}.masks-{event}.npz"


def clip_record(clip: Clip, name: str, cfg: SynthConfig) -> ClipRecord:
    events = [
        EventRecord(
            kind=ev.kind.value,
            category=ev.spec.category.value,
            onset_frame=ev.onset,
            full_frame=ev.full,
            end_state=ev.spec.end_state,
            caption=caption,
            mask_file=mask_file(name, i),
            mask_pixels=[int(n) for n in masks.reshape(len(masks), -1).sum(1)],
        )
        for i, (ev, caption, masks) in enumerate(
            zip(clip.events, clip.interactions, clip.event_masks, strict=True)
        )
    ]
    return ClipRecord(
        name=name,
        seed=clip.seed,
        frames=cfg.frames,
        fps=cfg.fps,
        width=cfg.size,
        height=cfg.size,
        video=f"{name}.mp4",
        intrinsics=clip.intrinsics.round(6).tolist(),
        c2w=clip.c2w.round(9).tolist(),
        actions=[
            ActionRecord(keys=sorted(k.value for k in a.keys), mouse=(a.mouse_dx, a.mouse_dy))
            for a in clip.shot.actions
        ],
        captions=clip.captions,
        events=events,
        scene=clip.scene,
    )


def twin_name(name: str) -> str:
    return f"{name}{TWIN_SUFFIX}"


def write_clip(out: Path, cfg: SynthConfig, seed: int, index: int) -> list[ClipRecord]:
    """Clip ``index`` (and, with ``cfg.twins``, its counterfactual twin after it)."""
    name = clip_name(index)
    meta, twin_meta = out / f"{name}.json", out / f"{twin_name(name)}.json"
    if meta.exists() and (not cfg.twins or twin_meta.exists()):
        records = [ClipRecord.model_validate_json(meta.read_text(encoding="utf-8"))]
        if cfg.twins and records[0].events:
            records.append(ClipRecord.model_validate_json(twin_meta.read_text(encoding="utf-8")))
        return records
    clip = generate_clip(cfg, clip_seed(seed, index))
    records = []
    if cfg.twins and clip.events:
        # The same shot with nothing triggered and nothing asked: beside its clip, the only input that
        # differs is the instruction, so a model can tell the event from the scene only through it.
        still = replace(clip.shot, event=None, followups=())
        twin = replace(
            clip, frames=render_without_event(clip, cfg), shot=still, interactions=(), event_masks=()
        )
        encode_mp4(twin.frames, out / f"{twin_name(name)}.mp4", fps=cfg.fps, crf=cfg.crf)
        records.append(clip_record(twin, twin_name(name), cfg))
    encode_mp4(clip.frames, out / f"{name}.mp4", fps=cfg.fps, crf=cfg.crf)
    for i, masks in enumerate(clip.event_masks):
        tmp = out / f".{name}.masks-{i}.tmp.npz"
        tmp.write_bytes(pack_masks(masks))
        os.replace(tmp, out / mask_file(name, i))
    records.insert(0, clip_record(clip, name, cfg))
    for record in records[1:]:  # the twin first: the clip's JSON, written last, marks both complete
        atomic_text(out / f"{record.name}.json", record.model_dump_json(indent=1))
    atomic_text(meta, records[0].model_dump_json(indent=1))
    return records


def load_masks(path: str | Path) -> np.ndarray:
    """A labelled clip's ``NAME.masks.npz``: (F, H, W) bool."""
    return unpack_masks(path)


def index_entry(record: ClipRecord) -> dict[str, object]:
    ev = record.events[0] if record.events else None
    return {
        "name": record.name,
        "video": record.video,
        "meta": f"{record.name}.json",
        "frames": record.frames,
        "seed": record.seed,
        "event": ev.kind if ev else None,
        "category": ev.category if ev else None,
    }


def _one(args: tuple[Path, SynthConfig, int, int]) -> list[ClipRecord]:
    return write_clip(*args)


def write_dataset(
    out: str | Path,
    cfg: SynthConfig,
    *,
    clips: int,
    seed: int,
    workers: int = 1,
    progress: Callable[[ClipRecord], None] | None = None,
) -> list[ClipRecord]:
    """Generate ``clips`` labelled clips into ``out`` (skipping finished ones) and its index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, cfg, seed, i) for i in range(clips)]
    results: Iterator[list[ClipRecord]]
    if workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_one, jobs)
    else:
        pool, results = None, map(_one, jobs)
    records = []
    try:
        for written in results:
            records.extend(written)
            if progress:
                progress(written[0])
    finally:
        if pool:
            pool.shutdown()
    atomic_text(out / INDEX, "".join(json.dumps(index_entry(r)) + "\n" for r in records))
    pack(out, records)
    return records


def clip_meta(record: ClipRecord) -> ClipMeta:
    """The training-data view of a labelled clip: everything SynthWorld knows, exactly."""
    event = record.events[0] if record.events else None
    return ClipMeta(
        key=record.name,
        source=f"synthworld:{record.seed}",
        frames=record.frames,
        fps=record.fps,
        width=record.width,
        height=record.height,
        camera=CameraTrack(source="truth", confidence=1.0, intrinsics=record.intrinsics, c2w=record.c2w),
        captions=record.captions,
        actions=record.actions,
        interaction=event.caption if event else None,
        interaction_onset=event.onset_frame if event else None,
        events=[
            ClipEvent(
                kind=e.kind,
                category=e.category,
                onset_frame=e.onset_frame,
                full_frame=e.full_frame,
                end_state=e.end_state,
                interaction=e.caption,
            )
            for e in record.events
        ],
        masks=event is not None,
    )


def pack(out: Path, records: list[ClipRecord], *, shard_clips: int = SHARD_CLIPS) -> None:
    """Pack the labelled clips in ``out`` as a dataset (``shards/`` + ``dataset.json``, written last)."""
    shards = []
    for i in range(0, len(records), shard_clips):
        payloads = []
        for record in records[i : i + shard_clips]:
            meta = clip_meta(record)
            masks = (out / record.events[0].mask_file).read_bytes() if meta.masks else None
            payloads.append(ClipPayload(meta, (out / record.video).read_bytes(), masks))
        name = shard_path(i // shard_clips)
        shards.append(write_data_shard(str(out), name, payloads))
    write_data_index(str(out), "synthworld", shards)
