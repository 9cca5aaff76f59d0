"""``smoa import-authors``: turn an adapter saved by the authors' SMoA code into one of this project.

smoa import-authors ./their-adapter --model ./llama-2-7b --output ./smoa-adapter

The orders are computed once, with the authors' arithmetic, and saved with the factors (the authors' code recomputes
them at every load, so their ΔW depends on the SVD run); the result loads with ``PeftModel.from_pretrained`` after
``import smoa``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-authors",
        help="import an adapter saved by the authors' SMoA code (misonsky/SMoA)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("adapter", help="the folder their code saved (adapter_config.json, adapter_model.bin)")
    parser.add_argument(
        "--model", help="the base model it was trained on: 'default', a folder or hub id (default: its config's)"
    )
    parser.add_argument("--output", required=True, help="folder for the imported adapter (must not exist)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from smoa._io import OutputPathError, check_output_path
    from smoa.adapter.authors import AuthorsCheckpointError, import_authors_adapter, read_authors_checkpoint
    from smoa.models import load_model_and_tokenizer
    from smoa.training.checkpoints import save_dir_atomic
    from smoa.training.model_card import save_adapter

    output = Path(args.output)
    try:
        if output.exists():
            raise AuthorsCheckpointError(f"--output {output} exists; give a new folder (nothing is overwritten)")
        check_output_path(output, "--output", folder=True)
        config, _ = read_authors_checkpoint(args.adapter)  # a wrong folder fails before the model loads
        model_name = args.model or config.base_model_name_or_path
        if not model_name:
            raise AuthorsCheckpointError(f"{args.adapter} names no base model; give it with --model")
        model, _ = load_model_and_tokenizer(model_name, dtype=args.dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            peft_model = import_authors_adapter(model, args.adapter)
        save_dir_atomic(output, lambda tmp: save_adapter(peft_model, tmp))
    except (AuthorsCheckpointError, OutputPathError, FileNotFoundError, OSError) as error:
        print(f"smoa import-authors: {error}", file=sys.stderr)
        return 2
    for warning in caught:
        if "SVD run" in str(warning.message):
            print(f"note: {warning.message}", file=sys.stderr)
    print(f"imported {args.adapter} → {output} (base {model_name})")
    return 0
