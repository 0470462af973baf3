"""The pipeline's mixing step: curated clips and SynthWorld's labelled clips, weighted (DESIGN.md §5:
stage 2 mixes curated real clips with synthetic interactive ones)."""

from __future__ import annotations

from worldloop.data import DataSource, read_index, write_mixture
from worldloop.settings import Settings


def training_mixture(
    curated: str, synthetic: str, *, synthetic_weight: float, out: str, settings: Settings | None = None
) -> list[DataSource]:
    """Write ``out/mixture.json``: ``curated`` at ``1 - synthetic_weight`` and ``synthetic`` at
    ``synthetic_weight`` (left out at 0). Both must be datasets; the curated one must have kept clips."""
    if not 0.0 <= synthetic_weight < 1.0:
        raise ValueError(
            f"synthetic_weight must be in [0, 1) (the curated data always takes part), got {synthetic_weight}"
        )
    if read_index(curated, settings=settings).clips == 0:
        raise ValueError(f"{curated}: curation kept no clips; see its quarantine.jsonl for why")
    read_index(synthetic, settings=settings)
    sources = [DataSource(uri=curated, weight=1.0 - synthetic_weight)]
    if synthetic_weight > 0:
        sources.append(DataSource(uri=synthetic, weight=synthetic_weight))
    write_mixture(out, sources, settings=settings)
    return sources
