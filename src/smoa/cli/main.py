"""Entry point of the ``smoa`` command.

Each sub-command lives in its own module ``smoa.cli.<name>`` exposing ``register(subparsers)``, which adds its parser
and sets ``func`` (a callable taking the parsed namespace and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS = (
    "train",
    "eval",
    "compare",
    "study",
    "evidence",
    "data",
    "methods",
    "analyze",
    "bench",
    "import-authors",
    "export",
)


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
    code = int(args.func(args) or 0)
    release_process_group()
    return code


def release_process_group() -> None:
    """Destroy the process group of a ``torchrun`` launch once the command has finished, in every process.

    Left to interpreter shutdown, gloo's worker threads can still hold tensors whose release needs the interpreter
    being torn down, and the process aborts (SIGABRT, "terminate called without an active exception") after a run
    that succeeded. Not called when the command raised: destroying while a peer waits in a collective can hang.
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
