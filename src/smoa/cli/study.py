"""``smoa study``: a resumable, pre-declared comparison — per-method learning-rate sweeps chosen on validation loss,
final runs over several seeds, a paired bootstrap interval of the difference, tables and figures.

smoa study --recipe recipes/study-cpu.yaml                # run (or continue) the study, then summarise it
smoa study --recipe recipes/study-cpu.yaml --summarize    # only recompute tables and figures from the result JSONs
smoa study --recipe recipes/study-cpu.yaml --plan         # list the tasks still to run
smoa study --recipe recipes/study-cpu.yaml --floor        # write the label-prior floor of the validation loss
"""

from __future__ import annotations

import argparse
import sys

from ._recipe_args import add_set_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run a fair, resumable multi-seed comparison (lr sweep per method, seeds, paired bootstrap CI)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", required=True, help="study YAML file (see recipes/study-*.yaml)")
    add_set_argument(parser, "a key of the shared training recipe")
    parser.add_argument("--summarize", action="store_true", help="only rewrite tables and figures from the results")
    parser.add_argument("--plan", action="store_true", help="list the tasks still to run (ready ones first)")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="write label_prior.json (the validation loss of a model knowing only format and label shares), then "
        "summarise",
    )
    parser.add_argument("--max-tasks", type=int, default=None, help="stop after running this many tasks")
    parser.add_argument(
        "--doc",
        default="docs/study.md",
        help="markdown file whose study markers receive the tables (default docs/study.md)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ._recipe_args import user_errors

    try:
        return _run(args)
    except (*user_errors(), ValueError) as error:
        print(f"smoa study: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from smoa.study import load_study, run_study, write_summary
    from smoa.study.runner import load_results, tasks_in_order

    study = load_study(args.recipe, args.overrides)
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ValueError(f"--max-tasks must be >= 1, got {args.max_tasks}")
    if args.plan:
        results = load_results(study)
        pending = [t.id for t in tasks_in_order(study, results) if t.id not in results]
        print(f"{len(results)} tasks done; ready now: {', '.join(pending) or 'none'}")
        return 0
    if args.floor:
        from smoa.study.floor import write_label_prior

        for seed, entry in write_label_prior(study)["seeds"].items():
            print(
                f"seed {seed}: uniform guess {entry['uniform']:.4f} ± {entry['uniform_se']:.4f}, label prior "
                f"{entry['label_prior']:.4f} ± {entry['label_prior_se']:.4f} ({entry['examples']} validation examples)"
            )
    elif not args.summarize:
        run_study(study, max_tasks=args.max_tasks)
        _write_floor_once(study)
    summary = write_summary(study, args.doc)
    print(f"summary: {study.results_dir}/summary.md ({summary['results']} results)")
    return 0


def _write_floor_once(study) -> None:
    """After running tasks, the label-prior floor of a commonsense study is written once (it depends only on the
    data, the seeds and the tokenizer)."""
    from pathlib import Path

    from smoa.study.floor import FLOOR_FILE, write_label_prior

    if study.recipe.task == "commonsense" and not (Path(study.results_dir) / FLOOR_FILE).is_file():
        write_label_prior(study)
