"""A stage trains on a weighted mixture given as ``--data URI=W`` and its checkpoint's ``lineage.json``
lists exactly the shards its loader read — across a resume, and carried on by the next stage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from clip_datasets import make_dataset

from worldloop import storage
from worldloop.components.training.run import run_stage
from worldloop.data import read_lineage
from worldloop.model.train.checkpoint import latest_checkpoint
from worldloop.model.train.config import CurriculumPhase, TrainConfig, stage_preset


def _config(stage: str, steps: int) -> TrainConfig:
    return stage_preset(stage).model_copy(
        update={
            "curriculum": (CurriculumPhase(frames=9, steps=steps),),
            "height": 32,
            "width": 32,
            "checkpoint_every": 2,
            "log_every": 1,
        }
    )


def test_lineage_lists_the_shards_the_loader_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_dataset(str(a), clips=12, per_shard=2, size=32, prefix="a")  # 6 shards: a short run reads some
    make_dataset(str(b), clips=4, per_shard=2, size=32, prefix="b")
    read: set[tuple[str, str]] = set()
    real = storage.read_range

    def spy(uri: str, offset: int, length: int, **kw: object) -> bytes:
        root, _, name = uri.partition("/shards/")
        read.add((root, f"shards/{name}"))
        return real(uri, offset, length, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "read_range", spy)
    cfg = _config("action", steps=4)
    data = [f"{a}=0.75", f"{b}=0.25"]
    out = tmp_path / "action"
    run_stage(cfg, data=data, out=out, track=False, max_steps=2)
    run_stage(cfg, data=data, out=out, track=False)  # resumes at step 2, ends at 4

    found = latest_checkpoint(out)
    assert found is not None and found.name == "step-00000004"
    lineage = read_lineage(found)
    assert lineage is not None and [s.stage for s in lineage.stages] == ["action"]
    sources = lineage.stages[0].sources
    assert [(s.uri, s.weight, s.clips) for s in sources] == [(str(a), 0.75, 12), (str(b), 0.25, 4)]
    listed = {(s.uri, r.name) for s in sources for r in s.shards_read}
    assert listed == read and 0 < len(listed) < 8  # what was read, no more
    for s in sources:
        for r in s.shards_read:
            assert r.sha256 == hashlib.sha256((Path(s.uri) / r.name).read_bytes()).hexdigest()
    samples = 4 * cfg.batch_size * cfg.grad_accum  # both runs' windows
    assert sum(r.clips_read for s in sources for r in s.shards_read) == samples

    sft = _config("instruction", steps=2).model_copy(update={"checkpoint_every": 1})
    run_stage(sft, data=str(b), out=tmp_path / "sft", init=out, track=False, max_steps=1)
    nxt = run_stage(sft, data=str(b), out=tmp_path / "sft", init=out, track=False)  # resumed at step 1
    assert nxt.result.resumed_from == 1
    carried = read_lineage(nxt.checkpoint_dir / latest_checkpoint(nxt.checkpoint_dir).name)  # type: ignore[union-attr]
    assert carried is not None and [s.stage for s in carried.stages] == ["action", "instruction"]
    assert carried.stages[0] == lineage.stages[0]
    assert [s.uri for s in carried.stages[1].sources] == [str(b)]
