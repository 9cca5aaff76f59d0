"""``smoa eval``: evaluate a base or adapted model on a task, print the table and write the JSON.

smoa eval --model default --task commonsense --limit 100 --method loglik
smoa eval --task commonsense --method cloze              # answer-text scoring, lm-eval's acc / acc_norm
smoa eval --harness smoa_arc_easy,smoa_piqa --adapter ./runs/smoa-r32   # the same, scored by lm-eval itself
smoa eval --model ./my-model --adapter ./runs/smoa-r32 --task gsm8k --output gsm8k.json
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from smoa._io import check_output_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (optionally with an adapter) on commonsense, GSM8K or ConvAI2",
        description="Evaluate a base or adapted model with the papers' prompts, decoding and scoring.",
        epilog="examples:\n"
        "  smoa eval --task commonsense --method cloze --limit 100     answer texts, lm-eval's acc / acc_norm\n"
        "  smoa eval --task piqa --method loglik --adapter runs/x/adapter   the most likely answer label\n"
        "  smoa eval --harness smoa_arc_easy,smoa_piqa --adapter runs/x/adapter   scored by lm-eval itself\n"
        "  smoa-lm-eval run --model smoa --model_args adapter=runs/x/adapter --tasks smoa_commonsense\n"
        "see docs/evaluation.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (packaged SmolLM2-135M-Instruct) or a local Hugging Face model folder",
    )
    parser.add_argument("--adapter", help="a PEFT adapter folder (adapter_config.json) to load on top of the model")
    parser.add_argument(
        "--task",
        help="commonsense, a dataset (boolq, piqa, siqa, hellaswag, winogrande, arc_e, arc_c, obqa), gsm8k, convai2, "
        "or custom (your own --data-file)",
    )
    parser.add_argument(
        "--harness",
        metavar="TASKS",
        help="evaluate with lm-evaluation-harness instead (pip install -e '.[harness]'): comma-separated lm-eval "
        "tasks; smoa_<set> (e.g. smoa_arc_easy, smoa_piqa; 'commonsense' = all eight) read the packaged data offline. "
        "--limit/--seed pick the same examples as --method cloze",
    )
    own = parser.add_argument_group("your own data (--task custom)")
    own.add_argument("--data-file", help="JSON, JSONL, CSV, Parquet file or save_to_disk folder of held-out records")
    own.add_argument(
        "--data-format", choices=("auto", "instruction", "chat", "text"), default="auto", help="record format"
    )
    own.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=COLUMN",
        help="map a field to your column, e.g. --field instruction=question; repeatable",
    )
    own.add_argument(
        "--metric",
        choices=("auto", "exact_match", "contains", "regex", "choice", "none"),
        default="auto",
        help="answer metric (auto: choice with options, none for text, else exact_match); loss and perplexity always",
    )
    own.add_argument("--answer-regex", help="--metric regex: the pattern whose first group is the answer")
    parser.add_argument("--limit", type=positive_int, help="evaluate at most N examples per dataset (seeded subsample)")
    parser.add_argument("--seed", type=int, default=0, help="subsampling seed (default 0)")
    parser.add_argument(
        "--method",
        choices=("generate", "loglik", "cloze"),
        default="generate",
        help="generate (beam search, the papers' protocol), loglik (the most likely answer label, commonsense only) or "
        "cloze (the most likely answer text: lm-evaluation-harness' acc and acc_norm, commonsense only)",
    )
    parser.add_argument(
        "--template",
        choices=("smoa", "dora", "metamath", "dialogue", "alpaca", "memorize", "chat", "text"),
        help="prompt template (default: the task's; commonsense: smoa; custom: by the records' format)",
    )
    parser.add_argument("--num-beams", type=positive_int, help="beams (default 4)")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, help="override the task's max_new_tokens (16 / 200 / 32)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts per batch (default 8)")
    parser.add_argument("--data-dir", help="user data: LLM-Adapters dataset folder, GSM8K JSONL, or ConvAI2 folder")
    parser.add_argument("--bertscore-model", help="local encoder folder for BERTScore (dialogue); else unavailable")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--output", help="result JSON path (default outputs/eval-<task>-<time>.json)")
    parser.add_argument("--predictions", action="store_true", help="also store every prediction in the JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse then reports a bad value in one line, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def load_adapter(model, adapter_dir: str):
    """Wrap ``model`` with the PEFT adapter saved in ``adapter_dir`` (checked first; see smoa.methods)."""
    from smoa.methods import load_adapter as load_checked

    return load_checked(model, adapter_dir)


def evaluated_model(args: argparse.Namespace):
    """``(model, tokenizer)``: ``--model`` with ``--adapter`` loaded onto it when given (through the load gate)."""
    from smoa.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    return (load_adapter(model, args.adapter) if args.adapter else model), tokenizer


def run(args: argparse.Namespace) -> int:
    from smoa.evaluation.runner import evaluate_task
    from smoa.tasks import resolve_tasks
    from smoa.tasks.records import DataFormatError

    try:
        if (args.task is None) == (args.harness is None):
            raise ValueError("give --task (smoa's scorers) or --harness (lm-evaluation-harness), not both or neither")
        check_output_path(output_path(args), "--output")  # a result that could not be saved costs nothing
        if args.harness is not None:
            return run_harness(args)
        if args.task == "custom":
            return run_custom(args)
        resolve_tasks(args.task)
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        started = time.perf_counter()
        model, tokenizer = evaluated_model(args)
        result = evaluate_task(
            model,
            tokenizer,
            args.task,
            limit=args.limit,
            seed=args.seed,
            method=args.method,
            template=args.template,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
            progress=not args.no_progress,
            bertscore_model=args.bertscore_model,
            keep_predictions=args.predictions,
        )
    except (KeyError, FileNotFoundError, ValueError, DataFormatError, ImportError) as error:
        print(f"smoa eval: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    return report(args, result, started)


def run_custom(args: argparse.Namespace) -> int:
    """``--task custom``: your own held-out records, scored by :func:`smoa.evaluation.custom.evaluate_own_data`."""
    from smoa.evaluation.custom import evaluate_own_data
    from smoa.evaluation.runner import subsample
    from smoa.tasks.custom import dataset_name, load_records, parse_field_pairs, template_name
    from smoa.tasks.prompts import get_template

    if not args.data_file:
        raise ValueError("--task custom needs --data-file: your JSON, JSONL, CSV or Parquet file of records")
    # read before the model loads: a bad file fails in seconds
    records, _ = load_records(args.data_file, args.data_format, parse_field_pairs(args.field))
    records = subsample(records, args.limit, args.seed)
    template = get_template(args.template or template_name(records))
    started = time.perf_counter()
    model, tokenizer = evaluated_model(args)
    result = evaluate_own_data(
        model,
        tokenizer,
        records,
        name=dataset_name(args.data_file),
        template=template,
        metric=args.metric,
        answer_regex=args.answer_regex,
        max_new_tokens=args.max_new_tokens or 64,
        num_beams=args.num_beams or 1,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    if not args.predictions:
        result.pop("predictions")
    result["source"] = args.data_file
    return report(args, result, started)


def run_harness(args: argparse.Namespace) -> int:
    """``--harness TASKS``: lm-eval's ``simple_evaluate`` on the loaded model (see :mod:`smoa.harness`)."""
    from smoa.harness import (
        check_task_names,
        harness_result,
        require_lm_eval,
        resolve_harness_tasks,
        sample_indices,
    )

    require_lm_eval()  # before the model loads: the install command in one line
    tasks = resolve_harness_tasks(args.harness)
    check_task_names(tasks)
    samples = sample_indices(tasks, args.limit, args.seed)
    started = time.perf_counter()
    model, tokenizer = evaluated_model(args)
    result = harness_result(
        model, tokenizer, tasks, samples=samples, batch_size=args.batch_size, keep_samples=args.predictions
    )
    return report(args, result, started)


def output_path(args: argparse.Namespace) -> Path:
    """``--output``, else ``outputs/eval-<task>-<time>.json`` (the time fixed at the first call)."""
    if not args.output:
        name = args.task if args.task is not None else "harness"
        args.output = str(Path("outputs") / f"eval-{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    return Path(args.output)


def report(args: argparse.Namespace, result: dict, started: float) -> int:
    """Print the table and write the result JSON."""
    from smoa.evaluation.runner import results_markdown
    from smoa.tasks.records import write_json

    wall = round(time.perf_counter() - started, 1)
    result.update({"model": args.model, "adapter": args.adapter, "wall_seconds": wall})
    label = Path(args.adapter).name if args.adapter else Path(args.model).name
    print(results_markdown(result, label=label))
    output = output_path(args)
    write_json(output, result)
    print(f"results written to {output} (wall time {result['wall_seconds']} s)")
    return 0
