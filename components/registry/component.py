"""KFP component: register a checkpoint as a model version (alias ``candidate``) with its lineage.

Top-level imports are stdlib and ``kfp.dsl`` only; the body imports the library from the image.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from worldloop.components.base_image import IMAGE


@dsl.component(base_image=IMAGE)
def register(
    parent_run_id: str,
    checkpoint: Input[Model],
    interbench: Input[Dataset],
    quality: Input[Dataset],
) -> int:
    """Register ``checkpoint`` with the InterBench scores in ``interbench`` and its quality ladder in
    ``quality``; its data lineage is the checkpoint's own (what training read). Returns the version."""
    from pathlib import Path

    from worldloop.components.registry import register_version

    report = Path(interbench.path)
    info = register_version(
        checkpoint.path,
        report_dir=report,
        quality_dir=Path(quality.path),
        pipeline_run_id=parent_run_id or None,
    )
    return info.version
