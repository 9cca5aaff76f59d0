"""``smoa export``: an adapter merged into a full-precision checkpoint that loads without smoa (for serving).

smoa export runs/smoa-r32/adapter --output exported/smoa-r32
smoa export ./qlora-adapter --quantized-base nf4 --output exported/qlora   # trained on a 4-bit base
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from smoa.export import QUANTIZATIONS

    parser = subparsers.add_parser(
        "export",
        help="merge an adapter into its base and write a plain transformers checkpoint (vLLM, TGI, GGUF)",
        description="Merge an adapter (W = W0 + ΔW) and write safetensors, config, tokenizer, generation config and "
        "a model card to a new folder; the folder loads with plain transformers, without smoa.",
    )
    parser.add_argument("adapter", help="the adapter folder (adapter_config.json) or a smoa train run folder")
    parser.add_argument("--output", required=True, help="a new (or empty) folder for the merged checkpoint")
    parser.add_argument("--model", help="the base model (default: the one the adapter records; 'default' = packaged)")
    parser.add_argument(
        "--quantized-base",
        choices=QUANTIZATIONS,
        help="the adapter was trained on this bitsandbytes base: its update is computed there and added to the "
        "full-precision weights",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from smoa.export import ExportError, export_merged

    try:
        output = export_merged(
            args.adapter, args.output, base=args.model, dtype=args.dtype, quantized=args.quantized_base
        )
    except (ExportError, FileNotFoundError, ValueError, ImportError) as error:
        print(f"smoa export: {error}", file=sys.stderr)
        return 2
    print(f"merged checkpoint written to {output} (loads with AutoModelForCausalLM.from_pretrained, no smoa needed)")
    return 0
