"""Evaluate a model on a task: records → prompts → generations (or choice likelihoods) → scores → tables.

Result JSON (``evaluate_task``)::

    {"task": "commonsense", "method": "generate", "template": "smoa", "limit": 100, "seed": 0,
     "datasets": {"boolq": {"display": "BoolQ", "metric": "accuracy", "accuracy": 61.0, "correct": 61,
                            "total": 100, "size": 3270, "no_answer": 2, "seconds": 12.3}, ...},
     "average": 48.9}

Each finished dataset is logged at INFO on the ``smoa.evaluation.runner`` logger as :func:`evaluation_line` (with
``extra`` fields ``task`` and ``dataset``); the library adds no handler, ``smoa compare`` prints them.

``method="cloze"`` scores each choice's answer text (lm-eval's ``acc``, stored as ``accuracy``, and ``acc_norm``,
stored as ``accuracy_norm``; see :mod:`smoa.evaluation.cloze`); its predictions are choice indices with their
log-likelihoods.

Accuracies are percentages; ``average`` is the unweighted mean over the evaluated datasets (math: the one
accuracy; dialogue: the metric dict, ``average`` = HiRA's Avg or None). ``predictions`` (optional) lists, per dataset,
``{"uid", "prediction", "answer", "correct"}``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from smoa._progress import progress_enabled
from smoa.evaluation.cloze import cloze_log_likelihoods, score_cloze
from smoa.evaluation.generation import generate_batched
from smoa.evaluation.likelihood import predict_by_likelihood
from smoa.tasks import TaskSpec, decoding_for, dialogue, load_eval_records, memorize, resolve_tasks
from smoa.tasks import math as math_task
from smoa.tasks.cloze import ClozeItem, load_cloze_items
from smoa.tasks.prompts import get_template, prompt_token_ids
from smoa.tasks.records import Record
from smoa.tasks.scoring import dialogue_metrics, extract_choice, extract_metamath_answer

Method = Literal["generate", "loglik", "cloze"]
METHODS: tuple[str, ...] = ("generate", "loglik", "cloze")
logger = logging.getLogger(__name__)
T = TypeVar("T")
COMMONSENSE_COLUMNS = ("BoolQ", "PIQA", "SIQA", "HellaSwag", "WinoGrande", "ARC-e", "ARC-c", "OBQA")
DIALOGUE_COLUMNS = (
    ("bleu", "BLEU"),
    ("meteor", "METEOR"),
    ("rouge_l", "ROUGE-L"),
    ("f1", "F1"),
    ("distinct_1", "Dist-1"),
    ("distinct_2", "Dist-2"),
    ("bert_p", "BERT-P"),
    ("bert_r", "BERT-R"),
    ("bert_f1", "BERT-F1"),
    ("avg", "Avg"),
)


def subsample(records: Sequence[T], limit: int | None, seed: int = 0) -> list[T]:
    """At most ``limit`` records (or cloze items) drawn with ``random.Random(seed)``, kept in their original order
    (all if None)."""
    if limit is None or limit >= len(records):
        return list(records)
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]


def evaluation_line(summary: dict[str, Any]) -> str:
    """One dataset's result in one line: ``BoolQ: accuracy 61.00% (61/100), 12.3 s``; dialogue sets give HiRA's
    Avg, sets scored by loss only their perplexity."""
    name = summary.get("display", "?")
    if summary.get("accuracy") is not None:
        score = f"accuracy {summary['accuracy']:.2f}% ({summary.get('correct', '?')}/{summary.get('total', '?')})"
        if summary.get("accuracy_norm") is not None:  # cloze: lm-eval's acc, then acc_norm
            score += f", length-normalised {summary['accuracy_norm']:.2f}% ({summary.get('correct_norm', '?')})"
        if summary.get("char_accuracy") is not None:  # memorisation: exact match, then per character
            score += f", character accuracy {summary['char_accuracy']:.2f}%"
    elif summary.get("avg") is not None:
        score = f"avg {summary['avg']:.2f} over {summary.get('total', '?')} examples"
    elif summary.get("perplexity") is not None:
        score = f"perplexity {summary['perplexity']:.2f} over {summary.get('total', '?')} examples"
    else:
        score = f"{summary.get('total', '?')} examples"
    seconds = summary.get("seconds")
    return f"{name}: {score}" + ("" if seconds is None else f", {seconds:.1f} s")


class _Progress:
    """A tqdm bar when ``enabled`` (and :func:`smoa._progress.progress_enabled` allows bars), else a no-op."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.bar = None
        if enabled and progress_enabled():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, unit="ex", leave=False)

    def __call__(self, count: float) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def evaluate_records(
    model,
    tokenizer,
    spec: TaskSpec,
    records: Sequence[Record],
    *,
    method: Method = "generate",
    template: str | None = None,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    bertscore_model: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``records`` of one task; returns ``(summary, predictions)`` (see the module docstring for fields).

    ``method="loglik"`` (commonsense only) picks the most likely label instead of generating. ``num_beams`` and
    ``max_new_tokens`` override the task's decoding settings.
    """
    from dataclasses import replace

    template_name = template or spec.template
    prompt_template = get_template(template_name)
    started = time.perf_counter()
    bar = _Progress(len(records), spec.display, progress)
    try:
        if method == "loglik":
            if spec.family != "commonsense":
                raise ValueError(f"the log-likelihood scorer is for commonsense sets, not {spec.name}")
            texts = predict_by_likelihood(model, tokenizer, records, prompt_template, batch_size, bar)
        elif method == "generate":
            decoding = decoding_for(spec, template_name)
            if num_beams is not None:
                decoding = replace(decoding, num_beams=num_beams)
            if max_new_tokens is not None:
                decoding = replace(decoding, max_new_tokens=max_new_tokens)
            prompts = [prompt_token_ids(r, tokenizer, prompt_template) for r in records]
            texts = generate_batched(model, tokenizer, prompts, decoding, batch_size, bar)
        else:
            raise ValueError(
                f"method must be 'generate' or 'loglik' for records, got {method!r} (cloze: evaluate_task)"
            )
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if spec.family == "dialogue":
        return _score_dialogue(spec, records, texts, seconds, bertscore_model)
    if spec.family == "memorize":
        return _score_memorize(spec, records, texts, seconds)
    predictions = []
    correct = no_answer = 0
    for record, text in zip(records, texts, strict=True):
        if spec.family == "commonsense":
            extracted = extract_choice(text, spec.name)
            ok = extracted is not None and extracted == record.answer
        else:
            extracted = extract_metamath_answer(text)
            ok = math_task.is_correct(text, record)
        no_answer += extracted is None
        correct += ok
        predictions.append(
            {"uid": record.uid, "prediction": text, "extracted": extracted, "answer": record.answer, "correct": ok}
        )
    total = len(records)
    summary = {
        "display": spec.display,
        "metric": "accuracy",
        "accuracy": 100.0 * correct / total if total else None,
        "correct": correct,
        "total": total,
        "no_answer": no_answer,
        "seconds": round(seconds, 2),
    }
    return summary, predictions


def evaluate_cloze(
    model, tokenizer, spec: TaskSpec, items: Sequence[ClozeItem], *, batch_size: int = 16, progress: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score cloze ``items`` of one commonsense set; returns ``(summary, predictions)`` (``acc`` and ``acc_norm``)."""
    started = time.perf_counter()
    bar = _Progress(len(items), spec.display, progress)
    try:
        predictions = score_cloze(items, cloze_log_likelihoods(model, tokenizer, items, batch_size, bar))
    finally:
        bar.close()
    total = len(items)
    correct = sum(p["correct"] for p in predictions)
    correct_norm = sum(p["correct_norm"] for p in predictions)
    summary = {
        "display": spec.display,
        "metric": "accuracy",
        "accuracy": 100.0 * correct / total if total else None,
        "accuracy_norm": 100.0 * correct_norm / total if total else None,
        "correct": correct,
        "correct_norm": correct_norm,
        "total": total,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary, predictions


def _score_memorize(spec, records, texts, seconds):
    """Exact match of the greedy value (``accuracy``) and mean character accuracy over the pairs."""
    predictions = []
    for record, text in zip(records, texts, strict=True):
        extracted = memorize.extract_value(text, len(record.answer))
        predictions.append({
            "uid": record.uid, "prediction": text, "extracted": extracted, "answer": record.answer,
            "correct": extracted == record.answer, "char_accuracy": memorize.char_accuracy(extracted, record.answer),
        })  # fmt: skip
    total = len(records)
    correct = sum(p["correct"] for p in predictions)
    summary = {
        "display": spec.display,
        "metric": "accuracy",
        "accuracy": 100.0 * correct / total if total else None,
        "char_accuracy": 100.0 * sum(p["char_accuracy"] for p in predictions) / total if total else None,
        "correct": correct,
        "total": total,
        "no_answer": sum(not p["extracted"] for p in predictions),
        "seconds": round(seconds, 2),
    }
    return summary, predictions


def _score_dialogue(spec, records, texts, seconds, bertscore_model):
    references = [list(r.references or (r.output,)) for r in records]
    metrics = dialogue_metrics(texts, references, bertscore_model=bertscore_model)
    predictions = [
        {"uid": r.uid, "prediction": t, "references": refs}
        for r, t, refs in zip(records, texts, references, strict=True)
    ]
    summary = {
        "display": spec.display,
        "metric": "dialogue",
        **metrics,
        "total": len(records),
        "seconds": round(seconds, 2),
    }
    return summary, predictions


def evaluate_task(
    model,
    tokenizer,
    task: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    method: Method = "generate",
    template: str | None = None,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    data_dir: str | None = None,
    progress: bool = True,
    bertscore_model: str | None = None,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Evaluate on a task name (``commonsense``, one dataset, ``gsm8k``, ``convai2``); returns the result dict.

    ``limit`` subsamples each dataset with ``seed`` (see :func:`subsample`); ``data_dir`` points at user data
    (see :func:`smoa.tasks.load_eval_records`). ConvAI2 items are merged into multi-reference items first.
    """
    specs = resolve_tasks(task)
    result: dict[str, Any] = {
        "task": task,
        "method": method,
        "template": template or specs[0].template,
        "limit": limit,
        "seed": seed,
        "datasets": {},
    }
    if method == "generate":
        beams = num_beams if num_beams is not None else specs[0].decoding.num_beams
        result["num_beams"] = beams
    if keep_predictions:
        result["predictions"] = {}
    if method == "cloze":
        wrong = [spec.name for spec in specs if spec.family != "commonsense"]
        if wrong:
            raise ValueError(
                f"cloze scoring is for the commonsense sets, not {', '.join(wrong)}; use --method generate"
            )
        if data_dir is not None:
            raise ValueError(
                "cloze scoring reads the packaged sets' raw fields; --data-dir (LLM-Adapters files) holds only the "
                "letter-label form: drop --data-dir or use --method loglik"
            )
    for spec in specs:
        if method == "cloze":
            items = load_cloze_items(spec.name)
            summary, predictions = evaluate_cloze(
                model, tokenizer, spec, subsample(items, limit, seed), batch_size=batch_size, progress=progress
            )
            summary["size"] = len(items)
            result["datasets"][spec.name] = summary
            logger.info(evaluation_line(summary), extra={"task": task, "dataset": spec.name})
            if keep_predictions:
                result["predictions"][spec.name] = predictions
            continue
        records = load_eval_records(spec.name, data_dir)
        if spec.family == "dialogue":
            records = dialogue.merge_references(records)
        size = len(records)
        records = subsample(records, limit, seed)
        summary, predictions = evaluate_records(
            model,
            tokenizer,
            spec,
            records,
            method=method,
            template=template,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
            bertscore_model=bertscore_model,
        )
        summary["size"] = size
        result["datasets"][spec.name] = summary
        logger.info(evaluation_line(summary), extra={"task": task, "dataset": spec.name})
        if keep_predictions:
            result["predictions"][spec.name] = predictions
    accuracies = [s.get("accuracy") for s in result["datasets"].values() if s.get("metric") == "accuracy"]
    if accuracies and all(a is not None for a in accuracies):
        result["average"] = sum(accuracies) / len(accuracies)
        if method == "cloze":
            norms = [s["accuracy_norm"] for s in result["datasets"].values()]
            result["average_norm"] = sum(norms) / len(norms)
    else:
        result["average"] = next((s.get("avg") for s in result["datasets"].values()), None)
    return result


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def results_markdown(result: dict[str, Any], label: str = "model") -> str:
    """A markdown table: commonsense in the papers' column order (BoolQ … OBQA, Avg), GSM8K accuracy, or the
    dialogue metrics. Columns of datasets not evaluated are left out."""
    datasets = result["datasets"]
    families = {("dialogue" if s.get("metric") == "dialogue" else "accuracy") for s in datasets.values()}
    if result.get("task") == "custom":  # your own data: the answer metric, loss and perplexity
        [(name, summary)] = datasets.items()
        header = [f"{name} {summary['metric']}", "val loss", "perplexity", "examples"]
        row = [
            _cell(summary.get("accuracy")),
            "n/a" if summary.get("val_loss") is None else f"{summary['val_loss']:.4f}",
            _cell(summary.get("perplexity")),
            str(summary["total"]),
        ]
    elif families == {"dialogue"}:
        [summary] = datasets.values()
        header = [name for _, name in DIALOGUE_COLUMNS]
        row = [_cell(summary.get(key)) for key, _ in DIALOGUE_COLUMNS]
    else:
        by_display = {s["display"]: s for s in datasets.values()}
        order = [c for c in COMMONSENSE_COLUMNS if c in by_display] + [
            d for d in by_display if d not in COMMONSENSE_COLUMNS
        ]
        header = [*order]
        row = [_cell(by_display[d]["accuracy"]) for d in order]
        if len(order) > 1:
            header.append("Avg")
            row.append(_cell(result.get("average")))
        if result.get("method") in ("cloze", "harness"):  # lm-eval's acc, then acc_norm
            norm = [_cell(by_display[d]["accuracy_norm"]) for d in order]
            if len(order) > 1:
                norm.append(_cell(result.get("average_norm")))
            return _table(header, [(f"{label} (acc)", row), (f"{label} (acc_norm)", norm)])
    return _table(header, [(label, row)])


def _table(header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    lines = ["| " + " | ".join(["Model", *header]) + " |", "|" + "---|" * (len(header) + 1)]
    lines += ["| " + " | ".join([label, *row]) + " |" for label, row in rows]
    return "\n".join(lines)
