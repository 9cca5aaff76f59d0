"""Entry point of the ``smoa`` command.

Each sub-command lives in its own module ``smoa.cli.<name>`` exposing ``register(subparsers)``, which adds its parser
and sets ``func`` (a callable taking the parsed namespace and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS = ("train", "eval", "compare", "study", "evidence", "data", "methods", "analyze", "bench", "import-authors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoa",
        description="SMoA, the Spectrum Modulation Adapter: fine-tune, evaluate, compare and analyse PEFT adapters.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"smoa.cli.{name.replace('-', '_')}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
