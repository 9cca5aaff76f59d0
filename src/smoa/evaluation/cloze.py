"""Answer-text (cloze) scoring: lm-evaluation-harness' ``acc`` and ``acc_norm`` for multiple-choice items.

For item choices ``k = 1..n`` with context ``x_k`` and continuation ``c_k`` (see :mod:`smoa.tasks.cloze`)::

    ll_k      = Σ_t log p(c_k[t] | x_k, c_k[:t])           (summed over the continuation's tokens)
    acc       = [argmax_k ll_k == gold]
    acc_norm  = [argmax_k ll_k / len(norm_text_k) == gold]  (characters, lm-eval's completion_len)

Tokenisation is lm-eval's for causal models: trailing spaces of the context move to the continuation, the whole
``x + c`` is encoded with the tokenizer's default special tokens and split after ``len(encode(x))`` tokens. Ties go
to the first choice (``numpy.argmax``). Each choice is one forward pass of ``x + c`` (right-padded batches sorted by
length, the LM head only at the continuation's positions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from smoa.evaluation.likelihood import continuation_log_likelihoods
from smoa.tasks.cloze import ClozeItem


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` as lm-eval encodes them (see the module docstring)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return list(whole[: len(context_ids)]), list(whole[len(context_ids) :])


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))


def cloze_log_likelihoods(
    model,
    tokenizer,
    items: Sequence[ClozeItem],
    batch_size: int = 16,
    progress: Callable[[float], Any] | None = None,
) -> list[list[float]]:
    """``ll[i][k]``: the summed log-probability of choice k's continuation of item i (float32 logits)."""
    pairs, owners = [], []
    for index, item in enumerate(items):
        for k, (context, continuation) in enumerate(zip(item.contexts, item.continuations, strict=True)):
            context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
            if not context_ids:  # lm-eval conditions an empty context on the prefix token
                context_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
            if not continuation_ids:
                raise ValueError(f"{item.dataset} example {item.uid!r}: choice {k + 1} encodes to no tokens")
            pairs.append((context_ids, continuation_ids))
            owners.append((index, k))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_item = len(items) / max(len(pairs), 1)
    flat = continuation_log_likelihoods(
        model, pairs, pad, batch_size, (lambda n: progress(n * per_item)) if progress else None
    )
    scores: list[list[float]] = [[0.0] * len(item.continuations) for item in items]
    for (index, k), value in zip(owners, flat, strict=True):
        scores[index][k] = value
    return scores


def score_cloze(items: Sequence[ClozeItem], log_likelihoods: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """Per item: ``{"uid", "prediction", "prediction_norm", "gold", "correct", "correct_norm", "log_likelihoods"}``."""
    out = []
    for item, lls in zip(items, log_likelihoods, strict=True):
        prediction = _argmax(lls)
        prediction_norm = _argmax([ll / max(len(text), 1) for ll, text in zip(lls, item.norm_texts, strict=True)])
        out.append({
            "uid": item.uid, "prediction": prediction, "prediction_norm": prediction_norm, "gold": item.gold,
            "correct": prediction == item.gold, "correct_norm": prediction_norm == item.gold,
            "log_likelihoods": [float(v) for v in lls],
        })  # fmt: skip
    return out
