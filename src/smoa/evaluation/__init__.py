"""Evaluation: batched beam-search generation, a multiple-choice log-likelihood scorer, per-task scoring and tables.

Entry point: :func:`smoa.evaluation.runner.evaluate_task` (model, tokenizer, task name) → result dict, and
:func:`smoa.evaluation.runner.results_markdown` for the papers' table layout.
"""

from smoa.evaluation.runner import evaluate_records, evaluate_task, results_markdown, subsample

__all__ = ["evaluate_records", "evaluate_task", "results_markdown", "subsample"]
