"""``smoa analyze``: what adapters did to a model's weights, as the paper shows it, in a report folder.

Examples::

    smoa analyze --model default --adapter runs/smoa --adapter runs/lora --calibration prompts.txt --output report/
    smoa analyze --model smollm2-135m --ceiling-only --method smoa --method lora --method smoa:r=16,num_blocks=4

The first loads the base model, every adapter on a copy of it, and writes ranks, spectra, alignment, intruder
dimensions and block energies (see :mod:`smoa.analysis`). The second needs no weights: the rank-ceiling table of
each method for the model's config (built on the meta device).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smoa.methods import BUDGETS, NAMED_MODELS, method_names

DEFAULT_CEILING_METHODS = ("smoa", "lora", "dora", "hira", "melora", "mora")


def _check_report_folder(folder: str) -> None:
    from smoa._io import OutputPathError, check_output_path

    try:
        check_output_path(folder, "--output", folder=True)
    except OutputPathError as error:
        raise CommandError(str(error)) from None


class CommandError(Exception):
    """A user error: printed as one line, exit code 2."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` sub-command."""
    parser = subparsers.add_parser(
        "analyze",
        help="spectral analysis of adapters: rank of ΔW, spectrum shift, alignment, intruders (HTML/markdown report)",
        description="Analyse PEFT adapters of a base model: numerical rank and norm of ΔW per layer, singular spectrum "
        "of W0 vs W0+ΔW (head/middle/tail shift), alignment of singular directions with the layer-input covariance "
        "on calibration data, intruder dimensions, and the share of W0's energy in SMoA's diagonal blocks. Writes a "
        "report folder (report.html, report.md, figures/*.png, results.json, *.csv). With --ceiling-only, prints the "
        "rank-ceiling table of methods for a model config without loading weights.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="base model: 'default' (the packaged SmolLM2-135M-Instruct), a Hugging Face model folder, or (with "
        f"--ceiling-only) a named config: {', '.join(NAMED_MODELS)}",
    )
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR", help="PEFT adapter folder; repeatable")
    parser.add_argument("--label", action="append", default=[], help="name shown for each --adapter, in order")
    parser.add_argument(
        "--calibration",
        default=None,
        help="prompts for the activation covariance: a .txt file (one prompt per line), a .jsonl/.json file "
        "('text' or 'instruction' field), or a task name (e.g. boolq); without it the alignment study is skipped",
    )
    parser.add_argument("--calibration-samples", type=int, default=32, metavar="N", help="prompts used (default 32)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per prompt (default 128)")
    parser.add_argument("--centre", action="store_true", help="centre the covariance (default: C = XᵀX/N)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    parser.add_argument(
        "--spectrum-layer",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="layers for the spectrum figure: names containing this (repeatable; default first, middle, last)",
    )
    parser.add_argument("--output", default=None, help="report folder (required unless --ceiling-only)")
    parser.add_argument("--ceiling-only", action="store_true", help="only the weights-free rank-ceiling table")
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="method for the rank-ceiling table, optionally with overrides (smoa:r=16,num_blocks=4); repeatable. "
        f"Default with --ceiling-only: {', '.join(DEFAULT_CEILING_METHODS)}",
    )
    parser.add_argument("--budget", choices=BUDGETS, default="paper", help="settings of the ceiling table's methods")
    parser.add_argument("--target-modules", default=None, help="comma-separated targets for the ceiling table")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CommandError as error:
        print(f"smoa analyze: error: {error}", file=sys.stderr)
        return 2


def _ceiling_rows(args: argparse.Namespace, model: str) -> list:
    from smoa.analysis.ceilings import parse_method, rank_ceiling_table

    names = args.method or list(DEFAULT_CEILING_METHODS)
    try:
        methods = [parse_method(text) for text in names]
        targets = args.target_modules.split(",") if args.target_modules else None
        return rank_ceiling_table(model, methods, args.budget, targets)
    except (ValueError, TypeError) as error:
        unknown = "unknown method" in str(error) and "known methods" not in str(error)
        known = f" (known methods: {', '.join(method_names())})" if unknown else ""
        raise CommandError(f"{error}{known}") from None


def _print_ceilings(rows: list) -> None:
    from smoa.analysis.report import ceiling_rows
    from smoa.cli.methods import render_table

    flat = ceiling_rows(rows)
    header = ["method", "setting", "layer", "shape", "rank_ceiling", "full_rank", "trainable_params", "mergeable"]
    print(render_table([[str(r[h]) for h in header] for r in flat], header))


def load_base(model: str, tokenizer_dir: str | None) -> tuple[Any, Any]:
    """``(model, tokenizer or None)`` for 'default' or a Hugging Face folder (:mod:`smoa.models`), float32, eval."""
    import torch
    from transformers import AutoTokenizer

    from smoa.models import load_model, load_tokenizer

    if model.lower() in NAMED_MODELS and not Path(model).is_dir():
        raise CommandError(
            f"{model!r} is a named config without weights: it serves --ceiling-only; to analyse adapters give "
            "the base model folder they were trained on, or 'default'"
        )
    if model != "default" and not (Path(model) / "config.json").is_file():
        raise CommandError(f"model folder {model!r} has no config.json; give a folder written by save_pretrained")
    base = load_model(model, dtype=torch.float32, device="cpu")
    try:
        tokenizer = load_tokenizer(model)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # a folder saved without a tokenizer: calibration falls back to bytes
    if tokenizer_dir is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        except (OSError, ValueError) as error:
            raise CommandError(f"cannot load a tokenizer from --tokenizer {tokenizer_dir!r}: {error}") from None
    return base, tokenizer


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    if args.ceiling_only:
        if args.adapter:
            raise CommandError("--ceiling-only needs no --adapter (it reads only the model config); drop one of them")
        if args.output:
            _check_report_folder(args.output)
        rows = _ceiling_rows(args, args.model)
        _print_ceilings(rows)
        if args.output:
            from smoa.analysis.report import write_report

            written = write_report([], args.output, ceilings=rows, meta={"model": args.model, "budget": args.budget},
                                   title=f"Rank ceilings on {args.model}")  # fmt: skip
            print(f"wrote {written['report.html']}")
        return 0
    if not args.adapter:
        raise CommandError("give at least one --adapter DIR (or --ceiling-only for the weights-free table)")
    if not args.output:
        raise CommandError("--output DIR is required: the report folder to write")
    _check_report_folder(args.output)
    if args.label and len(args.label) != len(args.adapter):
        raise CommandError(f"{len(args.label)} --label for {len(args.adapter)} --adapter; give one per adapter or none")
    for adapter in args.adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise CommandError(f"adapter folder {adapter!r} has no adapter_config.json (PeftModel.save_pretrained)")
    if args.calibration_samples < 1:
        raise CommandError(f"--calibration-samples must be at least 1, got {args.calibration_samples}")

    from smoa.analysis.calibration import ByteTokenizer, CalibrationError, calibration_prompts, tokenize_prompts
    from smoa.analysis.collect import analyse_adapters
    from smoa.analysis.report import choose_spectrum_layers, headline_table, write_report
    from smoa.cli.methods import render_table

    batches = None
    tokens = 0
    if args.calibration:
        try:
            prompts = calibration_prompts(args.calibration, args.calibration_samples)
        except CalibrationError as error:
            raise CommandError(str(error)) from None
    base, tokenizer = load_base(args.model, args.tokenizer)
    if args.calibration:
        if tokenizer is None:
            print(
                f"note: {args.model} has no tokenizer; calibration text is fed as UTF-8 bytes (pass --tokenizer DIR "
                "for real tokens)",
                file=sys.stderr,
            )
            tokenizer = ByteTokenizer(base.config.vocab_size)
        try:
            batches = tokenize_prompts(prompts, tokenizer, args.max_length)
        except CalibrationError as error:
            raise CommandError(str(error)) from None
        tokens = sum(b.numel() for b in batches)
    labels = args.label or _default_labels(args.adapter)
    try:
        analyses = analyse_adapters(base, args.adapter, batches, labels, args.centre, not args.no_progress)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None
    ceilings = _ceiling_rows(args, args.model) if args.method else None
    elapsed = time.perf_counter() - started
    import torch

    meta = {
        "model": args.model,
        "adapters": ", ".join(f"{label}={path}" for label, path in zip(labels, args.adapter, strict=True)),
        "calibration": f"{args.calibration} ({len(batches)} prompts, {tokens} tokens)" if batches else "none",
        "covariance": "centred" if args.centre else "XᵀX/N (uncentred), base model inputs",
        "analysis time (s)": f"{elapsed:.1f}",
        "torch threads": torch.get_num_threads(),
        "written": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    spectrum_layers = args.spectrum_layer or None
    if spectrum_layers:
        try:
            spectrum_layers = choose_spectrum_layers(analyses, spectrum_layers)
        except ValueError as error:  # the analysis is done: keep it, with the default layers
            print(f"warning: --spectrum-layer: {error}; showing the default layers instead", file=sys.stderr)
            spectrum_layers = None
    written = write_report(analyses, args.output, ceilings, spectrum_layers, meta)
    header, rows = headline_table(analyses)
    print(render_table(rows, header))
    print(f"analysis took {elapsed:.1f} s; report: {written['report.html']}")
    return 0


def _default_labels(adapters: list[str]) -> list[str]:
    labels = [Path(a).resolve().name for a in adapters]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label}#{seen[label]}")
    return out
