"""``smoa compare``: several methods × seeds with one recipe, gathered into one results table.

smoa compare --recipe recipes/quickstart-cpu.yaml --methods smoa,lora
smoa compare --recipe recipes/llama-2-7b-commonsense.yaml --methods smoa,lora,dora,hira --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import os
import sys

from ._recipe_args import add_recipe_arguments, print_recipe_help, recipe_from_args, user_errors


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train and evaluate several methods (and seeds) with one recipe; print one table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_recipe_arguments(parser)
    parser.add_argument("--methods", default="smoa,lora", help="comma-separated method names (default smoa,lora)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the recipe's seed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except user_errors() as error:
        print(f"smoa compare: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.help_recipe:
        return print_recipe_help()
    from smoa.methods import get_method
    from smoa.training.checkpoints import write_text_atomic
    from smoa.training.compare import compare_table, run_compare
    from smoa.training.engines import is_main_process
    from smoa.training.recipe import RecipeError

    recipe = recipe_from_args(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        get_method(method)  # unknown names fail here, before any training
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [recipe.seed]
    if args.resume_from:
        raise RecipeError("--resume-from names one run's checkpoint; use it with smoa train (compare: --resume)")
    results = run_compare(recipe, methods, seeds, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # torchrun: the main process reports for all
        return 0
    table = compare_table(results)
    print(table)
    path = os.path.join(recipe.run_dir, "table.md")
    write_text_atomic(path, table + "\n")
    print(f"table: {path}")
    return 0
