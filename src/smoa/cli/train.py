"""``smoa train``: fine-tune a model with one method from a YAML recipe, then evaluate it.

smoa train --recipe recipes/smollm2-commonsense-cpu.yaml --method smoa
smoa train --recipe recipes/llama-3-8b-commonsense.yaml --set learning_rate=2e-4 --resume
torchrun --nproc_per_node 2 -m smoa.cli.main train --recipe ... --set deepspeed=configs/deepspeed/zero3.json
"""

from __future__ import annotations

import argparse
import json
import sys

from ._recipe_args import add_recipe_arguments, print_recipe_help, recipe_from_args, user_errors


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune with one method from a recipe (checkpoints, resume, evaluation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_recipe_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except user_errors() as error:
        print(f"smoa train: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.help_recipe:
        return print_recipe_help()
    from smoa.training import run_training
    from smoa.training.compare import compare_table
    from smoa.training.engines import is_main_process

    recipe = recipe_from_args(args)
    result = run_training(recipe, resume=args.resume, overwrite=args.overwrite, resume_from=args.resume_from)
    if not is_main_process():  # torchrun: the main process reports for all
        return 0
    print(compare_table([result]))
    print(f"adapter: {result.adapter_dir}\nresults: {result.run_dir}/results.json")
    print(json.dumps({"steps": result.steps, "best_val_loss": result.best_val_loss}, indent=None))
    return 0
