"""``smoa methods``: every method's trainable parameters, Params%, update-rank ceiling and mergeability for a model.

Works from a model config alone (the model is built on the meta device), e.g. ``smoa methods --model llama-2-7b``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from smoa.methods import (
    BUDGETS,
    NAMED_MODELS,
    MethodPlan,
    get_method,
    load_model_spec,
    matched_target,
    method_names,
    plan_all,
)

HIDDEN_SETTINGS = ("lora_dropout", "hira_dropout")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``methods`` sub-command."""
    parser = subparsers.add_parser(
        "methods",
        help="table of methods: trainable params, Params%%, rank ceiling, mergeable",
        description="For each method: trainable parameters, Params% = trainable / (base + trainable), update-rank "
        "ceiling per layer type, and whether it can be merged. Needs only the model's config.",
    )
    parser.add_argument(
        "--model",
        default="default",
        help="a Hugging Face model directory, a named config "
        f"({', '.join(NAMED_MODELS)}), or 'default' (SmolLM2-135M, as elsewhere; the default)",
    )
    parser.add_argument("--budget", choices=BUDGETS, default="paper", help="published settings or matched counts")
    parser.add_argument(
        "--target-params", type=int, default=None, help="matched budget target (default: SMoA r=32 K=2 on the model)"
    )
    parser.add_argument(
        "--target-modules",
        default=None,
        help="comma-separated module names for the weight adapters (default: q_proj,k_proj,v_proj,up_proj,down_proj)",
    )
    parser.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all)")
    parser.set_defaults(func=run)


def format_settings(plan: MethodPlan) -> str:
    """The plan's hyperparameters in one short string (per-layer patterns shown by their size)."""
    parts = []
    for key, value in plan.settings.items():
        if key in HIDDEN_SETTINGS:
            continue
        if isinstance(value, Mapping):
            parts.append(f"{key}[{len(value)} layers]={sorted(set(value.values()))}")
        elif value is True:
            parts.append(key)
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def format_ranks(ceilings: Mapping[str, int]) -> str:
    """``{'q_proj': 32, 'k_proj': 32, 'up_proj': 64}`` → ``q,k: 32; up: 64``."""
    if not ceilings:
        return "-"
    by_value: dict[int, list[str]] = {}
    for kind, rank in ceilings.items():
        by_value.setdefault(rank, []).append(kind.removesuffix("_proj"))
    return "; ".join(f"{','.join(kinds)}: {rank}" for rank, kinds in by_value.items())


def render_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines.extend(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ValueError as error:  # an unknown model or method, an unreachable budget
        print(f"smoa methods: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    spec = load_model_spec("smollm2-135m" if args.model == "default" else args.model)
    targets = args.target_modules.split(",") if args.target_modules else None
    methods = args.methods.split(",") if args.methods else None
    for name in methods or ():
        get_method(name)
    target = args.target_params
    if args.budget == "matched" and target is None:
        target = matched_target(spec, targets)
    plans = plan_all(spec, args.budget, target, targets, methods)
    header = ["method", "setting", "trainable", "Params%", "rank ceiling per layer", "mergeable"]
    if args.budget == "matched":
        header.insert(4, "vs target")
    rows = []
    for name, plan in zip(methods or method_names(), plans, strict=True):
        if isinstance(plan, Exception):
            rows.append([name, f"n/a: {plan}", "-", "-", *(["-"] if args.budget == "matched" else []), "-", "-"])
            continue
        note = get_method(name).rank_note
        row: list[Any] = [
            name,
            format_settings(plan),
            f"{plan.trainable_params:,}",
            f"{plan.params_percent:.4f}",
            format_ranks(plan.rank_ceilings) + (f" ({note})" if note else ""),
            "yes" if plan.mergeable else "no",
        ]
        if args.budget == "matched":
            row.insert(4, f"{plan.deviation:+.2%}")
        rows.append(row)
    title = f"{spec.name}: base {spec.base_params:,} parameters, budget {args.budget}"
    if args.budget == "matched":
        title += f", target {target:,} trainable (±2%)"
    print(title)
    print(render_table(rows, header))
    return 0
