"""KFP component: render SynthWorld clips (labelled, or raw text-video pairs with bad clips mixed in).

Top-level imports are stdlib and ``kfp.dsl`` only; the body imports the library from the image.
"""

from kfp import dsl
from kfp.dsl import Dataset, Output

from worldloop.components.base_image import IMAGE


@dsl.component(base_image=IMAGE)
def synth(
    clips: int,
    frames: int,
    size: int,
    seed: int,
    raw: bool,
    bad_fraction: float,
    parent_run_id: str,
    dataset: Output[Dataset],
    twins: bool = False,
) -> None:
    """``clips`` SynthWorld clips into ``dataset``: labelled (MP4 + JSON truth), or raw pairs (``raw``).
    ``twins``: each labelled clip also as its counterfactual twin (same shot, no event, no instruction)."""
    from worldloop.components.synthworld import SynthConfig, write_dataset, write_raw
    from worldloop.platform.tracking import child_run, log_metrics

    cfg = SynthConfig(size=size, frames=frames, twins=twins and not raw)
    params = {"clips": clips, "frames": frames, "size": size, "seed": seed, "raw": raw, "twins": twins}
    with child_run(parent_run_id, "synth-raw" if raw else "synth", params) as run_id:
        if raw:
            truths = write_raw(dataset.path, cfg, clips=clips, seed=seed, bad_fraction=bad_fraction)
            bad = sum(t.defect.value != "none" for t in truths)
            dataset.metadata.update({"kind": "raw", "clips": clips, "bad": bad})
        else:
            records = write_dataset(dataset.path, cfg, clips=clips, seed=seed)
            dataset.metadata.update({"kind": "labelled", "clips": clips, "records": len(records)})
        log_metrics(run_id, {"clips": clips})
