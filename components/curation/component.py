"""KFP component: curate raw text-video pairs into an interactive dataset (manifest + shards + stats).

Top-level imports are stdlib and ``kfp.dsl`` only; the body imports the library from the image.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from worldloop.components.base_image import IMAGE


@dsl.component(base_image=IMAGE)
def curate(
    source_uri: str,
    executor: str,
    parent_run_id: str,
    curated: Output[Dataset],
    raw: Input[Dataset] | None = None,
) -> None:
    """Curate ``source_uri`` (the user's raw pairs: a folder or s3 prefix) when set, else ``raw`` (an
    upstream artifact: SynthWorld's raw pairs).

    ``executor``: ``ray`` (Ray Data; the cluster's with WORLDLOOP_RAY_ADDRESS) or ``local`` (in-process).
    """
    from worldloop.components.curation.pipeline import run_curation
    from worldloop.platform.tracking import child_run, log_metrics

    source = source_uri or (raw.path if raw is not None else "")
    if not source:
        raise ValueError("curate needs a raw dataset: an upstream artifact or source_uri")
    with child_run(parent_run_id, "curate", {"source": source, "executor": executor}) as run_id:
        summary = run_curation(source, curated.path, executor=executor)  # type: ignore[arg-type]
        stats = summary.as_json()
        curated.metadata.update({"kept_clips": summary.kept_clips, "sources": summary.sources})
        log_metrics(
            run_id,
            {
                "sources": summary.sources,
                "kept_clips": summary.kept_clips,
                "interactions": summary.interactions,
            },
        )
        curated.metadata["dropped"] = stats["dropped"]
