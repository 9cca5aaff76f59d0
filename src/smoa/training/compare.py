"""Several methods × seeds trained and evaluated with one recipe, gathered into one results table."""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
from collections.abc import Callable
from typing import Any

from smoa._progress import progress_bars

from .checkpoints import write_json_atomic
from .engines import is_main_process
from .preflight import check_method_settings
from .recipe import Recipe
from .trainer import TrainResult, run_training

COMMONSENSE_ORDER = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa")


def run_compare(
    recipe: Recipe,
    methods: list[str],
    seeds: list[int],
    *,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
) -> list[TrainResult]:
    """Train and evaluate ``recipe`` once per method and seed, each in ``<run_dir>/<method>-seed<seed>``, each method
    at its rate from ``recipe.method_learning_rates`` (else ``recipe.learning_rate``).

    Each finished evaluation is logged as one line, ``<method>-seed<seed> · <dataset>: accuracy …, <seconds> s``,
    as it finishes; ``recipe.progress: false`` turns the progress bars off.
    """
    for method in methods:  # every arm's settings before the first arm trains
        check_method_settings(recipe.for_method(method))
    results = []
    with EvaluationLines(log) as lines:
        for method in methods:
            for seed in seeds:
                name = f"{method}-seed{seed}"
                run = dataclasses.replace(
                    recipe.for_method(method),
                    seed=seed,
                    name=f"{recipe.name}-{name}",
                    output_dir=os.path.join(recipe.run_dir, name),
                )
                log(f"=== {name} ===")
                lines.run, lines.seen = name, set()
                with progress_bars(run.progress):
                    result = run_training(run, resume=resume, overwrite=overwrite, log=log)
                lines.finish(result.evaluation)
                results.append(result)
    if is_main_process():  # the other processes of a torchrun launch hold no evaluation
        write_json_atomic(os.path.join(recipe.run_dir, "compare.json"), [r.__dict__ for r in results])
    return results


class EvaluationLines(logging.Handler):
    """Within ``with``, each evaluation the runner logs goes to ``log`` as one line naming ``run``; :meth:`finish`
    adds a line for every evaluated dataset of the run that was not logged (those the runner does not score)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.log = log
        self.run = ""
        self.seen: set[tuple[str, str]] = set()

    def __enter__(self) -> EvaluationLines:
        from smoa.evaluation.runner import logger

        self._level = logger.level
        logger.addHandler(self)
        logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        from smoa.evaluation.runner import logger

        logger.removeHandler(self)
        logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.add((getattr(record, "task", ""), getattr(record, "dataset", "")))
        self.log(f"{self.run} · {record.getMessage()}")

    def finish(self, evaluation: dict[str, Any]) -> None:
        from smoa.evaluation.runner import evaluation_line

        for task, result in evaluation.items():
            for dataset, summary in result.get("datasets", {}).items():
                if (task, dataset) not in self.seen:
                    self.log(f"{self.run} · {evaluation_line(summary)}")


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def compare_table(results: list[TrainResult]) -> str:
    """A markdown table, one row per method (means over seeds): accuracy per evaluated dataset and average, the
    half-width of one run's 95 % interval over its evaluated examples (mean over seeds), trainable parameters and
    %, mean update rank, train time and peak memory."""
    by_method: dict[str, list[TrainResult]] = {}
    for r in results:
        by_method.setdefault(r.method, []).append(r)
    datasets: list[tuple[str, str]] = []  # (task, dataset)
    for r in results:
        for task, evaluation in r.evaluation.items():
            for name in evaluation.get("datasets", {}):
                if (task, name) not in datasets:
                    datasets.append((task, name))
    datasets.sort(key=lambda td: COMMONSENSE_ORDER.index(td[1]) if td[1] in COMMONSENSE_ORDER else 99)
    displays = [
        next(
            r.evaluation[t]["datasets"][d].get("display", d)
            for r in results
            if d in r.evaluation.get(t, {}).get("datasets", {})
        )
        for t, d in datasets
    ]
    header = ["Method", "lr", "Seeds", *displays]
    if len(datasets) > 1:
        header.append("Avg")
    header.append("±95%")
    header += ["Trainable", "Params%", "ΔW rank", "Train s", "Peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, runs in by_method.items():
        rates = sorted({r.learning_rate for r in runs if r.learning_rate is not None})
        cells: list[str] = [method, "/".join(f"{rate:g}" for rate in rates) or "n/a", str(len(runs))]
        accs = []
        for task, name in datasets:
            acc = _mean([_metric(r, task, name) for r in runs])
            accs.append(acc)
            cells.append(_fmt(acc))
        if len(datasets) > 1:
            cells.append(_fmt(_mean(accs) if all(a is not None for a in accs) else None))
        widths = [half_width_95(r, datasets) for r in runs]
        cells.append("n/a" if None in widths else f"± {_mean(widths):.1f}")
        first = runs[0]
        cells += [
            f"{first.trainable_params:,}",
            f"{first.params_percent:.4f}",
            _fmt(_mean([r.update_rank for r in runs]), 1),
            _fmt(_mean([r.train_seconds for r in runs]), 0),
            _fmt(_mean([r.peak_memory_mib for r in runs]), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def half_width_95(result: TrainResult, datasets: list[tuple[str, str]]) -> float | None:
    """Half-width (points) of the 95 % interval of one run's mean accuracy over ``datasets``, over its evaluated
    examples (:func:`smoa.evaluation.intervals.mean_accuracy_half_width`); None for non-accuracy metrics."""
    from smoa.evaluation.intervals import mean_accuracy_half_width

    if not datasets:
        return None
    accuracies, totals = [], []
    for task, name in datasets:
        summary = result.evaluation.get(task, {}).get("datasets", {}).get(name, {})
        if summary.get("accuracy") is None or not summary.get("total"):
            return None
        accuracies.append(summary["accuracy"] / 100)
        totals.append(summary["total"])
    return mean_accuracy_half_width(accuracies, totals)


def _metric(result: TrainResult, task: str, dataset: str) -> float | None:
    summary: dict[str, Any] = result.evaluation.get(task, {}).get("datasets", {}).get(dataset, {})
    if "accuracy" in summary:
        return summary["accuracy"]
    return summary.get("avg")
