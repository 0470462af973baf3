"""The ``evaluation`` pipeline: InterBench and the general metrics of a model (``models:/…`` or a
checkpoint folder)."""

from kfp import dsl
from kfp.dsl import Metrics, Output
from kfp.dsl.graph_component import GraphComponent

from worldloop.components.evaluation.component import evaluate
from worldloop.pipelines.cluster import ClusterConfig, apply_common
from worldloop.pipelines.full import cached


def build(cluster: ClusterConfig | None = None, *, cache_key: str | None = None) -> GraphComponent:
    cfg = cluster or ClusterConfig()

    @dsl.pipeline(name="worldloop-evaluation", description="InterBench + general video metrics")
    def evaluation(
        model_uri: str = "models:/worldloop@candidate",
        cases: int = 0,
        suite_cases: int = 0,
        parent_run_id: str = "",
    ) -> Output[Metrics]:
        task = evaluate(
            model_uri=model_uri, cases=cases, suite_cases=suite_cases, parent_run_id=parent_run_id
        )
        cached(apply_common(task.set_display_name("interbench"), cfg), cache_key)
        return task.outputs["metrics"]

    return evaluation
