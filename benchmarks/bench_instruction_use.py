"""Does a checkpoint read its instruction? ``python -m benchmarks.bench_instruction_use URI [URI ...]``

For each model (``LABEL=URI`` or ``URI``: a checkpoint folder, ``models:/…``, ``preset:tiny``), the error
of its predicted clean latents on held-out InterBench cases (SynthWorld, one per event kind, the ladder's
held-out seed) under the case's own instruction, another case's and none, and how far the instruction
moves the prediction toward the event (:mod:`worldloop.components.evaluation.quality.instruction_use`).
A model that ignores its instruction has gains and ``toward`` near 0. Prints a table; ``--json`` writes
the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from benchmarks.models_arg import each_model, models_parser
from worldloop.components.evaluation.quality.heldout import HELD_OUT_SEED
from worldloop.components.evaluation.quality.instruction_use import INSTRUCTIONS, SIGMAS, instruction_use
from worldloop.components.evaluation.suite import SUITE_TAG, LoadedSuite, build_synthworld_suite, load_suite
from worldloop.components.synthworld import EventKind
from worldloop.settings import get_settings


def held_out_suite(size: int, frames: int) -> LoadedSuite:
    """One single-turn case per event kind on the held-out seed, rendered once into the local home."""
    cases = len(EventKind)
    root = (
        get_settings().home
        / "interbench"
        / f"instruction-use-s{HELD_OUT_SEED}-{size}px-{frames}f-{cases}-{SUITE_TAG}"
    )
    try:
        return load_suite(root)
    except FileNotFoundError:
        return build_synthworld_suite(
            root, cases=cases, size=size, frames=frames, seed=HELD_OUT_SEED, multi_turn_every=0
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = models_parser("python -m benchmarks.bench_instruction_use", __doc__)
    parser.add_argument("--frames", type=int, default=33, help="Video frames per case")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    for label, stack in each_model(args.models):
        suite = held_out_suite(stack.spec.height, args.frames)
        results[label] = instruction_use(stack, suite, repeats=args.repeats)
    levels = " ".join(f"σ {sigma:g}".rjust(7) for sigma in SIGMAS)
    header = " ".join(f"{i:>9}" for i in INSTRUCTIONS) + "  gain wrong / none   toward " + levels
    print(f"\n{'model':<24} {header}")
    for label, s in results.items():
        errors = " ".join(f"{s[f'x0_mse.{i}']:9.4f}" for i in INSTRUCTIONS)
        per_sigma = " ".join(f"{s[f'toward.{sigma:g}']:+7.3f}" for sigma in SIGMAS)
        gains = f"{s['gain.wrong']:+7.1%} / {s['gain.none']:+7.1%}"
        print(f"{label:<24} {errors}  {gains}  {s['toward']:+.3f} {per_sigma}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
