"""Does a checkpoint read its camera? ``python -m benchmarks.bench_camera_use URI [URI ...]``

For each model (``LABEL=URI`` or ``URI``: a checkpoint folder, ``models:/…``, ``preset:tiny``), the error
of its predicted clean latents on held-out SynthWorld clips under the true camera, another clip's
camera and a still camera (:mod:`worldloop.components.evaluation.quality.camera_use`), per noise level,
and the gains: how much worse the wrong cameras are, as a fraction of the true camera's error. A model
that ignores its camera has gains near 0. Prints a table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from benchmarks.models_arg import each_model, models_parser
from worldloop.components.evaluation.quality.camera_use import CAMERAS, SIGMAS, camera_use
from worldloop.components.evaluation.quality.heldout import held_out_set


def main(argv: Sequence[str] | None = None) -> None:
    parser = models_parser("python -m benchmarks.bench_camera_use", __doc__)
    parser.add_argument("--clips", type=int, default=8, help="Held-out clips")
    parser.add_argument("--blocks", type=int, default=2, help="Causal blocks per clip")
    parser.set_defaults(repeats=3)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    for label, stack in each_model(args.models):
        held = held_out_set(stack.spec, clips=args.clips, blocks=args.blocks)
        results[label] = camera_use(stack, held, repeats=args.repeats)
    print(f"\n{'model':<24} {'σ':>5} " + " ".join(f"{c:>9}" for c in CAMERAS))
    for label, scores in results.items():
        for sigma in SIGMAS:
            row = " ".join(f"{scores[f'x0_mse.{c}.sigma{sigma:g}']:9.4f}" for c in CAMERAS)
            print(f"{label:<24} {sigma:>5g} {row}")
        print(
            f"{label:<24} gain: permuted {scores['gain.permuted']:+.1%}, static {scores['gain.static']:+.1%}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
