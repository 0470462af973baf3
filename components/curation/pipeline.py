"""Curation run: plan shards over the sorted inputs, process missing shards (Ray Data or in-process),
then merge the manifest, quarantine list and summary.

The shard is the unit of work and of resume. Shard ``k`` always holds the same inputs (sorted names,
``shard_size`` per shard) and processing is deterministic, so a run killed at any point and started
again produces the same dataset as one that was never interrupted: finished shards (their result
JSON exists and was made with the same config) are skipped, the rest are redone from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from worldloop import storage
from worldloop.components.curation.captioning import build_captioner
from worldloop.components.curation.config import CurationConfig
from worldloop.components.curation.dataset import (
    CuratedClip,
    QuarantineEntry,
    ShardResult,
    jsonl,
    read_shard_result,
    shard_name,
    write_shard_files,
    write_shard_result,
)
from worldloop.components.curation.process import process_pair
from worldloop.components.curation.sources import SourcePair, discover
from worldloop.data import write_index
from worldloop.settings import Settings, get_settings

log = logging.getLogger(__name__)
Executor = Literal["ray", "local"]


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    pairs: tuple[SourcePair, ...]


@dataclass(frozen=True)
class CurationSummary:
    out: str
    sources: int
    shards: int
    shards_skipped: int
    kept_clips: int
    kept_frames: int
    dropped: dict[str, int]  # reason -> count
    camera: dict[str, int]  # camera source -> clips
    interactions: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        """The reproducible part (no timing): what summary.json holds."""
        return {
            "sources": self.sources,
            "shards": self.shards,
            "kept_clips": self.kept_clips,
            "kept_frames": self.kept_frames,
            "dropped": dict(sorted(self.dropped.items())),
            "camera": dict(sorted(self.camera.items())),
            "interactions": self.interactions,
        }


def config_hash(cfg: CurationConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def plan_shards(pairs: list[SourcePair], shard_size: int) -> list[ShardPlan]:
    return [
        ShardPlan(i, shard_name(i), tuple(pairs[start : start + shard_size]))
        for i, start in enumerate(range(0, len(pairs), shard_size))
    ]


def run_shard(plan: ShardPlan, cfg: CurationConfig, out: str, settings: Settings | None) -> ShardResult:
    """Process every pair of one shard and write it (tar, then the result JSON)."""
    captioner = build_captioner(cfg.captioner)
    clips: list[CuratedClip] = []
    quarantine: list[QuarantineEntry] = []
    videos: dict[str, bytes] = {}
    for pair in plan.pairs:
        item = process_pair(pair, cfg, captioner, shard=plan.name, settings=settings)
        clips.extend(item.clips)
        quarantine.extend(item.quarantine)
        videos.update(item.videos)
    result = ShardResult(
        shard=plan.name,
        config_hash=config_hash(cfg),
        sources=[p.name for p in plan.pairs],
        clips=clips,
        quarantine=quarantine,
        entry=write_shard_files(out, plan.name, clips, videos, settings=settings),
    )
    write_shard_result(out, result, settings=settings)
    return result


def _ray_task(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data ``map`` body: one shard per row (arguments travel as JSON)."""
    plan = ShardPlan(row["index"], row["name"], tuple(SourcePair(**p) for p in json.loads(row["pairs"])))
    cfg = CurationConfig.model_validate_json(row["config"])
    settings = Settings.model_validate_json(row["settings"])
    run_shard(plan, cfg, row["out"], settings)
    return {"index": plan.index}


def _run_ray(
    todo: list[ShardPlan], cfg: CurationConfig, out: str, workers: int, settings: Settings
) -> Iterator[int]:
    import ray

    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    rows = [
        {
            "index": p.index,
            "name": p.name,
            "pairs": json.dumps([vars(x) for x in p.pairs]),
            "config": cfg.model_dump_json(),
            "settings": settings.model_dump_json(),
            "out": out,
        }
        for p in todo
    ]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
        _ray_task, concurrency=workers, num_cpus=1
    )
    for row in ds.iter_rows():
        yield int(row["index"])


def _run_local(todo: list[ShardPlan], cfg: CurationConfig, out: str, settings: Settings) -> Iterator[int]:
    for plan in todo:
        run_shard(plan, cfg, out, settings)
        yield plan.index


def run_curation(
    input_uri: str,
    out: str,
    cfg: CurationConfig | None = None,
    *,
    workers: int = 1,
    executor: Executor = "ray",
    settings: Settings | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> CurationSummary:
    """Curate ``input_uri`` into ``out``; ``on_shard(done, total)`` reports progress."""
    cfg = cfg or CurationConfig()
    settings = settings or get_settings()
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    started = time.perf_counter()
    pairs = discover(input_uri, settings=settings)
    plans = plan_shards(pairs, cfg.shard_size)
    digest = config_hash(cfg)
    done: dict[int, ShardResult] = {}
    for plan in plans:
        existing = read_shard_result(out, plan.name, settings=settings)
        if existing is None:
            continue
        if existing.config_hash != digest or existing.sources != [p.name for p in plan.pairs]:
            raise ValueError(
                f"{out} holds {plan.name} made from other inputs or another config; "
                "curate into a new --out (or delete it) to start over"
            )
        done[plan.index] = existing
    skipped = len(done)
    todo = [p for p in plans if p.index not in done]
    log.info("curation: %d sources, %d shards, %d already done", len(pairs), len(plans), skipped)
    if on_shard:
        on_shard(len(done), len(plans))
    storage.write_bytes(
        storage.join(out, "config.json"), cfg.model_dump_json(indent=1).encode(), settings=settings
    )
    if todo:
        finished: Iterator[int]
        if executor == "ray":
            finished = _run_ray(todo, cfg, out, workers, settings)
        elif executor == "local":
            if workers != 1:
                raise ValueError("the local executor runs one worker; use --executor ray for more")
            finished = _run_local(todo, cfg, out, settings)
        else:
            raise ValueError(f"executor must be 'ray' or 'local', got {executor!r}")
        for index in finished:
            result = read_shard_result(out, shard_name(index), settings=settings)
            if result is None:
                raise RuntimeError(f"shard {shard_name(index)} reported done but has no result")
            done[index] = result
            if on_shard:
                on_shard(len(done), len(plans))
    return _merge(out, [done[p.index] for p in plans], len(pairs), skipped, started, settings)


def _merge(
    out: str,
    results: list[ShardResult],
    sources: int,
    skipped: int,
    started: float,
    settings: Settings,
) -> CurationSummary:
    clips = [c for r in results for c in r.clips]
    quarantine = [q for r in results for q in r.quarantine]
    summary = CurationSummary(
        out=out,
        sources=sources,
        shards=len(results),
        shards_skipped=skipped,
        kept_clips=len(clips),
        kept_frames=sum(c.frames for c in clips),
        dropped=dict(Counter(q.reason.value for q in quarantine)),
        camera=dict(Counter(c.camera.source for c in clips)),
        interactions=sum(c.interaction is not None for c in clips),
        seconds=time.perf_counter() - started,
    )
    storage.write_bytes(storage.join(out, "manifest.jsonl"), jsonl(list(clips)), settings=settings)
    storage.write_bytes(storage.join(out, "quarantine.jsonl"), jsonl(list(quarantine)), settings=settings)
    storage.write_bytes(
        storage.join(out, "summary.json"),
        json.dumps(summary.as_json(), indent=1, sort_keys=True).encode(),
        settings=settings,
    )
    write_index(out, "curated", [r.entry for r in results], settings=settings)  # last: the dataset is whole
    return summary
