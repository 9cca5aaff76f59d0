"""Evaluation on your own held-out records: validation loss and perplexity always, and an answer metric.

Result (``evaluate_own_data``), labelled with the dataset's own name::

    {"task": "custom", "method": "exact_match", "template": "alpaca",
     "datasets": {"arith": {"display": "arith", "metric": "exact_match", "val_loss": 0.81, "perplexity": 2.25,
                            "loss_tokens": 311, "accuracy": 45.0, "correct": 9, "total": 20, "seconds": 3.1}},
     "average": 45.0, "predictions": {"arith": [{"uid", "prediction", "answer", "correct"}, ...]}}

- ``val_loss`` is the mean next-token cross-entropy over every trained token of the records (the training loss's
  definition, :func:`smoa.lm_head.causal_lm_loss`), ``perplexity = exp(val_loss)``.
- Answer metrics: ``exact_match``, ``contains`` and ``regex`` compare a greedy (or beam) generation with the gold
  (:func:`smoa.tasks.scoring.answer_is_correct`); ``choice`` picks the option with the highest summed
  log-likelihood after the prompt (records must carry ``options``); ``none`` reports the loss only.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from typing import Any

import torch

from smoa.tasks import DecodingSettings
from smoa.tasks.custom import has_options
from smoa.tasks.prompts import PromptTemplate, collate_for_training, prompt_token_ids, tokenize_for_training
from smoa.tasks.records import Record
from smoa.tasks.scoring import ANSWER_METRICS, answer_is_correct

METRICS = ("auto", *ANSWER_METRICS, "choice", "none")


def resolve_metric(metric: str, records: Sequence[Record], template: PromptTemplate) -> str:
    """``auto`` → ``choice`` when the records carry options, ``none`` for plain text, else ``exact_match``."""
    if metric not in METRICS:
        raise ValueError(f"recipe key eval_metric={metric!r}: choose one of {', '.join(METRICS)}")
    multiple_choice = has_options(records)
    if metric == "auto":
        if multiple_choice:
            return "choice"
        return "none" if template.name == "text" else "exact_match"
    if metric == "choice" and not multiple_choice:
        raise ValueError("recipe key eval_metric='choice' needs records with options (a list) and an answer")
    if metric != "none" and template.name == "text":
        raise ValueError(f"recipe key eval_metric={metric!r}: plain-text records have no answers; use none")
    return metric


def answer_pattern(metric: str, answer_regex: str | None) -> re.Pattern[str] | None:
    """The compiled ``answer_regex`` for ``metric="regex"`` (None for other metrics); raises ValueError naming the
    recipe key when it is missing or not a valid regex."""
    if metric != "regex":
        return None
    if not answer_regex:
        raise ValueError("recipe key eval_metric='regex' needs answer_regex, e.g. answer_regex: '#### (\\S+)'")
    try:
        return re.compile(answer_regex)
    except re.error as error:
        raise ValueError(f"recipe key answer_regex={answer_regex!r} is not a valid regex: {error}") from None


@torch.no_grad()
def mean_token_loss(model, tokenizer, records: Sequence[Record], template: PromptTemplate, batch_size: int = 8):
    """``(Σ token losses / token count, token count)`` over the trained tokens of ``records`` (training's labels)."""
    from smoa.lm_head import causal_lm_loss

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    features = [tokenize_for_training(r, tokenizer, template) for r in records]
    features.sort(key=lambda f: len(f["input_ids"]))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(features), batch_size):
        batch = collate_for_training(features[start : start + batch_size], pad)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        if tokens == 0:
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        total += causal_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], 1).item()
        count += tokens
    if count and not math.isfinite(total):
        from smoa._io import NonFiniteResultError

        raise NonFiniteResultError(
            f"the validation loss is {total / count} (not finite) over {count} tokens: the model's outputs overflow. "
            "Check the adapter's weights (a factor that is huge or NaN) or evaluate in float32 (--dtype float32)"
        )
    return (total / count if count else float("nan")), count


def predict_choices(model, tokenizer, records: Sequence[Record], template: PromptTemplate, batch_size: int) -> list:
    """The option of each record with the highest ``Σ log p(option tokens | prompt)`` (ties: the first option)."""
    from smoa.evaluation.likelihood import choice_log_likelihoods

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    contexts = [prompt_token_ids(r, tokenizer, template) for r in records]
    candidates = [
        [tokenizer(template.response_format.format(output=o), add_special_tokens=False)["input_ids"] for o in r.options]
        for r in records
    ]
    scores = choice_log_likelihoods(model, contexts, candidates, pad, batch_size)
    return [r.options[max(range(len(row)), key=row.__getitem__)] for r, row in zip(records, scores, strict=True)]


def evaluate_own_data(
    model,
    tokenizer,
    records: Sequence[Record],
    *,
    name: str,
    template: PromptTemplate,
    metric: str = "auto",
    answer_regex: str | None = None,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``records`` (the user's held-out set): loss, perplexity and the answer metric (module docstring)."""
    from smoa.evaluation.generation import generate_batched
    from smoa.evaluation.runner import _Progress

    if not records:
        raise ValueError(f"{name}: no evaluation records")
    metric = resolve_metric(metric, records, template)
    pattern = answer_pattern(metric, answer_regex)
    model.eval()
    started = time.perf_counter()
    loss, tokens = mean_token_loss(model, tokenizer, records, template, batch_size)
    summary: dict[str, Any] = {
        "display": name,
        "metric": metric,
        "val_loss": loss,
        "perplexity": math.exp(loss) if math.isfinite(loss) and loss < 700 else None,
        "loss_tokens": tokens,
        "total": len(records),
    }
    predictions: list[dict[str, Any]] = []
    if metric != "none":
        if metric == "choice":
            texts = predict_choices(model, tokenizer, records, template, batch_size)
            verdicts = [text == r.answer for text, r in zip(texts, records, strict=True)]
        else:
            bar = _Progress(len(records), name, progress)
            try:
                prompts = [prompt_token_ids(r, tokenizer, template) for r in records]
                decoding = DecodingSettings(max_new_tokens=max_new_tokens, num_beams=num_beams)
                texts = generate_batched(model, tokenizer, prompts, decoding, batch_size, bar)
            finally:
                bar.close()
            verdicts = [answer_is_correct(t, r.answer, metric, pattern) for t, r in zip(texts, records, strict=True)]
        correct = sum(verdicts)
        summary.update(accuracy=100.0 * correct / len(records), correct=correct)
        predictions = [
            {"uid": r.uid, "prediction": t, "answer": r.answer, "correct": ok}
            for r, t, ok in zip(records, texts, verdicts, strict=True)
        ]
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return {
        "task": "custom",
        "method": metric,
        "template": template.name,
        "datasets": {name: summary},
        "average": summary.get("accuracy"),
        "predictions": {name: predictions},
    }
