"""The a14b memory plan in the README is the arithmetic of ``memory_plan`` on the parameter counts of
the model built on the meta device."""

from __future__ import annotations

from pathlib import Path

from worldloop.model import load_preset
from worldloop.model.train.memory_plan import GB, count_parameters, plan, table, window_tokens

README = Path(__file__).resolve().parents[3] / "README.md"


def test_the_a14b_memory_plan_adds_up_and_is_the_one_the_readme_shows() -> None:
    cfg = load_preset("a14b")
    counts = count_parameters(cfg)
    assert 14.0e9 < counts.per_expert < 14.5e9  # a Wan2.2 A14B expert
    assert 2 * counts.per_expert < counts.total < 2 * counts.per_expert + 0.3e9  # + camera, interaction
    assert 2 * counts.per_expert < counts.trained <= counts.total
    assert window_tokens(cfg, height=480, width=832, frames=81) == 21 * 30 * 52

    frozen = counts.total - counts.trained
    kept = plan(cfg, counts, gpus=8, gpu_bytes=80 * GB, offload=False)
    assert kept.student == kept.critic == (16 * counts.trained + 2 * frozen) / 8
    assert kept.teacher == 2 * counts.total / 8 and kept.host == 0
    offloaded = plan(cfg, counts, gpus=8, gpu_bytes=80 * GB, offload=True)
    assert offloaded.student == (4 * counts.trained + 2 * frozen) / 8
    assert offloaded.host == 2 * 12 * counts.trained  # both trained models' fp32 master + Adam moments
    # What the table concludes: on 80 GB GPUs the optimiser state must leave them; on 141 GB it need not.
    assert kept.free < 0 < 5 * GB < offloaded.free
    assert plan(cfg, counts, gpus=8, gpu_bytes=141 * GB, offload=False).free > 5 * GB

    assert table("a14b") in README.read_text(encoding="utf-8")
