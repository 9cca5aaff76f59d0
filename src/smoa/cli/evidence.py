"""``smoa evidence``: the pre-declared memorisation experiment (docs/evidence.md), resumable, one JSON per run.

smoa evidence --recipe recipes/evidence-memorize-cpu.yaml              # run (or continue) it, then summarise
smoa evidence --recipe recipes/evidence-memorize-cpu.yaml --plan       # the next run
smoa evidence --recipe recipes/evidence-memorize-cpu.yaml --summarize  # recompute tables and figures from the JSONs
smoa evidence --expressivity                                           # the expressivity fits (docs/evidence.md §2)
smoa evidence --expressivity --summarize
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evidence",
        help="run the memorisation experiment (lr sweep per arm, seeds, paired t-intervals)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", help="experiment YAML file (see recipes/evidence-*.yaml)")
    parser.add_argument(
        "--expressivity",
        metavar="DIR",
        nargs="?",
        const="docs/evidence/expressivity",
        help="fit each method's ΔW family to real and synthetic targets (one JSON per matrix and target in DIR, "
        "default docs/evidence/expressivity), then summarise",
    )
    parser.add_argument("--plan", action="store_true", help="show the next run and how many are done")
    parser.add_argument("--summarize", action="store_true", help="only rewrite the summary from the run JSONs")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ._recipe_args import user_errors

    try:
        return _run(args)
    except (*user_errors(), ValueError) as error:
        print(f"smoa evidence: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from smoa.evidence.protocol import load_experiment, load_runs, pending, run_experiment

    if args.expressivity is not None:
        from smoa.evidence.expressivity import run_expressivity
        from smoa.evidence.summary import write_expressivity

        if not args.summarize:
            run_expressivity(args.expressivity)
        summary = write_expressivity(args.expressivity)
        print(f"summary: {args.expressivity}/summary.md ({summary['fits']} fits)")
        return 0
    if args.recipe is None:
        raise ValueError("give --recipe FILE (the memorisation experiment) or --expressivity")

    experiment = load_experiment(args.recipe)
    if args.max_runs is not None and args.max_runs < 1:
        raise ValueError(f"--max-runs must be >= 1, got {args.max_runs}")
    if args.plan:
        print(f"{len(load_runs(experiment))} runs done; next: {', '.join(pending(experiment)) or 'none'}")
        return 0
    if not args.summarize:
        run_experiment(experiment, max_runs=args.max_runs)
    return _summarize(experiment)


def _summarize(experiment) -> int:
    from smoa.evidence.summary import write_summary

    summary = write_summary(experiment)
    for c in summary["comparisons"]:
        interval = (
            "no interval (one seed)"
            if c["low"] is None
            else f"95 % paired t-interval [{c['low']:+.1f}, {c['high']:+.1f}]"
        )
        verdict = "" if c["low"] is None else (" — resolved" if c["low"] > 0 or c["high"] < 0 else " — not resolved")
        print(
            f"{c['a']} − {c['b']}: {c['mean']:+.1f} points of character accuracy at step {c['step']} over "
            f"{len(c['seeds'])} seeds, {interval}{verdict}"
        )
    print(f"summary: {experiment.out}/summary.md ({summary['runs']} runs)")
    return 0
