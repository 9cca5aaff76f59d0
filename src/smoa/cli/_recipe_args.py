"""Arguments shared by ``smoa train`` and ``smoa compare``: a recipe file plus overrides."""

from __future__ import annotations

import argparse

from smoa.training.recipe import recipe_help

SHORTCUTS = {
    "model": "base model: 'default' (SmolLM2-135M-Instruct), a local folder or a hub id",
    "method": "method name (see `smoa methods`)",
    "task": "training family: commonsense, math, dialogue or memorize",
    "output_dir": "run folder (default runs/<name>)",
    "train_limit": "train on a seeded slice of N examples",
    "max_steps": "stop after N optimizer steps",
    "eval_limit": "evaluate on a seeded subsample of N examples per dataset",
    "seed": "random seed",
}


def add_set_argument(parser: argparse.ArgumentParser, what: str = "a recipe key") -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what} (YAML value), e.g. --set learning_rate=1e-4 --set method_args.r=16; repeatable",
    )


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="YAML recipe (see recipes/); keys not given take their defaults")
    add_set_argument(parser)
    for key, text in SHORTCUTS.items():
        kind = int if key in ("train_limit", "max_steps", "eval_limit", "seed") else str
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, help=f"{text} (recipe key {key})")
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    parser.add_argument(
        "--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint folder (verified first)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace what the output folder holds")
    parser.add_argument("--help-recipe", action="store_true", help="list every recipe key with its default and exit")


def recipe_from_args(args: argparse.Namespace):
    from smoa.training.recipe import load_recipe

    values = {key: getattr(args, key) for key in SHORTCUTS if getattr(args, key, None) is not None}
    return load_recipe(args.recipe, args.overrides, **values)


def print_recipe_help() -> int:
    print("Recipe keys (YAML file or --set KEY=VALUE):\n" + recipe_help())
    return 0


def user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the user's input: printed as one line (exit code 2) instead of a traceback."""
    from smoa._io import NonFiniteResultError
    from smoa.adapter.checkpoint import AdapterFileError
    from smoa.methods import AdapterFolderError, BudgetUnreachableError, UnknownMethodError, UnsupportedTargetError
    from smoa.tasks.records import DataFormatError
    from smoa.training.checkpoints import CheckpointError
    from smoa.training.hub import NonFiniteError
    from smoa.training.recipe import RecipeError
    from smoa.training.run_folder import DiskFullError, RunDirError

    return (
        RecipeError,
        RunDirError,
        NonFiniteError,
        DiskFullError,
        CheckpointError,
        UnknownMethodError,
        BudgetUnreachableError,
        UnsupportedTargetError,
        FileNotFoundError,
        DataFormatError,
        AdapterFileError,
        AdapterFolderError,
        NonFiniteResultError,
    )
