"""KFP components: InterBench (six interaction scores) and the general video metrics of a checkpoint, and
its quality ladder (beside the random-weight and frozen-first-frame baselines).

Top-level imports are stdlib and ``kfp.dsl`` only; the body imports the library from the image.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from worldloop.components.base_image import IMAGE


@dsl.component(base_image=IMAGE)
def evaluate(
    model_uri: str,
    cases: int,
    suite_cases: int,
    parent_run_id: str,
    interbench: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    checkpoint: Input[Model] | None = None,
) -> None:
    """Evaluate ``checkpoint`` (an upstream artifact) or, without it, ``model_uri`` (``models:/…``, a
    checkpoint folder). ``cases`` > 0 evaluates that many cases; ``suite_cases`` > 0 uses a SynthWorld
    suite of that many cases (rendered once under WORLDLOOP_HOME) instead of the default 100-case one."""
    import json
    import shutil
    from pathlib import Path

    from worldloop.components.evaluation.interbench import run_interbench
    from worldloop.components.evaluation.suite import SUITE_TAG, build_synthworld_suite, load_suite
    from worldloop.settings import get_settings

    model = checkpoint.path if checkpoint is not None else model_uri
    if not model:
        raise ValueError("evaluate needs a model: an upstream checkpoint or model_uri")
    suite: Path | None = None
    if suite_cases > 0:
        suite = get_settings().home / "interbench" / f"suite-{suite_cases}-{SUITE_TAG}"
        try:
            load_suite(suite)
        except FileNotFoundError:
            build_synthworld_suite(suite, cases=suite_cases)
    result = run_interbench(
        model,
        out=interbench.path,
        suite=suite,
        cases=cases if cases > 0 else None,
        parent_run_id=parent_run_id or None,
    )
    for artifact in (report, metrics):
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(interbench.path) / "report.html", report.path)
    values = {f"interbench_{k}": float(v) for k, v in result.interbench.items() if v is not None}
    values.update({k: float(v) for k, v in result.general.items()})
    for name, value in sorted(values.items()):
        metrics.log_metric(name, value)
    # The values also as a file: the artifact exists on disk (the local cache treats a missing one as a miss).
    Path(metrics.path).write_text(json.dumps(values, indent=1, sort_keys=True), encoding="utf-8")


@dsl.component(base_image=IMAGE)
def quality(
    clips: int,
    blocks: int,
    cases: int,
    parent_run_id: str,
    checkpoint: Input[Model],
    report: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """The quality ladder of ``checkpoint``: the model beside random weights and the frozen first frame
    on held-out SynthWorld (``clips`` clips, ``blocks`` blocks, ``cases`` InterBench cases)."""
    import json
    from pathlib import Path

    from worldloop.components.evaluation.quality import run_quality

    result = run_quality(
        checkpoint.path,
        out=report.path,
        clips=clips,
        blocks=blocks,
        cases=cases,
        parent_run_id=parent_run_id or None,
    )
    values = {
        f"{name}_{key}".replace(".", "_"): float(value)
        for name, measured in result.metrics.items()
        if name != "truth"
        for key, value in measured.items()
        if value is not None
    }
    for name, value in sorted(values.items()):
        metrics.log_metric(name, value)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(values, indent=1, sort_keys=True), encoding="utf-8")
