"""The quality ladder (DESIGN.md §6 stage 0, §7): a model beside its random-weight and frozen-first-frame
baselines on held-out SynthWorld — VAE reconstruction, per-block fidelity of rollouts from the true first
frame, camera error, direction checks and InterBench. ``worldloop eval quality`` runs
:func:`run_quality`; ``python -m benchmarks.bench_quality`` builds a ladder of trained stages."""

from worldloop.components.evaluation.quality.heldout import HELD_OUT_SEED
from worldloop.components.evaluation.quality.measures import DEFINITIONS, PSNR_CAP, metric_keys
from worldloop.components.evaluation.quality.run import CONTESTANTS, QualityResult, run_quality

__all__ = [
    "CONTESTANTS",
    "DEFINITIONS",
    "HELD_OUT_SEED",
    "PSNR_CAP",
    "QualityResult",
    "metric_keys",
    "run_quality",
]
