"""The ``curation`` pipeline: raw text-video pairs (a folder or s3 prefix) → curated dataset."""

from kfp import dsl
from kfp.dsl import Dataset, Output
from kfp.dsl.graph_component import GraphComponent

from worldloop.components.curation.component import curate
from worldloop.pipelines.cluster import ClusterConfig, apply_common
from worldloop.pipelines.full import cached


def build(cluster: ClusterConfig | None = None, *, cache_key: str | None = None) -> GraphComponent:
    cfg = cluster or ClusterConfig()

    @dsl.pipeline(name="worldloop-curation", description="Curate raw text-video pairs (Ray Data)")
    def curation(source_uri: str, executor: str = "ray", parent_run_id: str = "") -> Output[Dataset]:
        task = curate(source_uri=source_uri, executor=executor, parent_run_id=parent_run_id)
        cached(apply_common(task.set_display_name("curation"), cfg), cache_key)
        return task.outputs["curated"]

    return curation
