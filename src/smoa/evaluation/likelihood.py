"""Multiple-choice scoring by log-likelihood: a fast alternative to generation for the commonsense sets.

For a record whose instruction offers labels ``l_1 .. l_n`` (its ``Answer format:`` line), each candidate response is
the training target ``"the correct answer is l_k"`` under the same template. The prediction is
``argmax_k Σ_t log p(c_k[t] | bos + prompt + c_k[:t])`` (summed, not length-normalised; the candidates share their
prefix, so only the label tokens decide). One forward pass per candidate, no decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from smoa.lm_head import selected_logits
from smoa.tasks.commonsense import answer_labels
from smoa.tasks.prompts import PromptTemplate, prompt_token_ids
from smoa.tasks.records import Record


def _log_probs_at(model, ids: torch.Tensor, mask: torch.Tensor, spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """``log_softmax`` of the next-token logits at positions ``[start, stop)`` of each row: one ``(stop − start, V)``
    float32 tensor per row. The LM head runs at those positions only (:func:`smoa.lm_head.selected_logits`)."""
    device = next(model.parameters()).device
    positions = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (start, stop) in enumerate(spans):
        positions[row, start:stop] = True
    logits = selected_logits(model, ids.to(device), mask.to(device), positions.to(device)).float()
    log_probs = torch.log_softmax(logits, dim=-1)
    if bool(torch.isnan(log_probs).any()):  # -inf alone (a masked token) is a probability of 0, not an error
        from smoa._io import NonFiniteResultError

        raise NonFiniteResultError(
            "the model's next-token logits are NaN or +inf, so no log-likelihood is defined: its outputs overflow. "
            "Check the adapter's weights (a factor that is huge or NaN) or evaluate in float32 (--dtype float32)"
        )
    return list(torch.split(log_probs, [stop - start for start, stop in spans]))


@torch.no_grad()
def continuation_log_likelihoods(
    model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_token_id: int, batch_size: int = 16, progress=None
) -> list[float]:
    """``Σ log p(continuation | context)`` for each ``(context_ids, continuation_ids)`` pair (both non-empty).

    Sequences are right-padded into (B, L) batches sorted by length; token t of the continuation is scored from the
    logits at position ``len(context) + t - 1``.
    """
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
    scores = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        sequences = [list(pairs[i][0]) + list(pairs[i][1]) for i in chunk]
        length = max(len(s) for s in sequences)
        ids = torch.full((len(chunk), length), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        spans = [(len(pairs[i][0]) - 1, len(pairs[i][0]) + len(pairs[i][1]) - 1) for i in chunk]
        for index, log_probs in zip(chunk, _log_probs_at(model, ids, mask, spans), strict=True):
            targets = torch.tensor(list(pairs[index][1]), device=log_probs.device)
            scores[index] = log_probs[torch.arange(len(targets), device=log_probs.device), targets].sum().item()
        if progress is not None:
            progress(len(chunk))
    return scores


def choice_log_likelihoods(
    model,
    contexts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    pad_token_id: int,
    batch_size: int = 16,
    progress=None,
) -> list[list[float]]:
    """``Σ log p(candidate | context)`` for every candidate of every item; ``scores[i][k]`` for item i, candidate k.

    When an item's candidates differ only in their last token (``"... answer1"`` vs ``"... answer2"``), one forward
    pass over ``context + common prefix`` scores them all; other items fall back to one pass per candidate.
    """
    scores: list[list[float]] = [[0.0] * len(c) for c in candidates]
    shared_rows, fallback, fallback_owner = [], [], []
    for item, (context, options) in enumerate(zip(contexts, candidates, strict=True)):
        common = 0
        shortest = min(len(o) for o in options)
        while common < shortest - 1 and all(o[common] == options[0][common] for o in options):
            common += 1
        if all(len(o) == common + 1 for o in options) and len(context) > 0:
            shared_rows.append((item, list(context) + list(options[0][:common])))
        else:
            for k, option in enumerate(options):
                fallback.append((context, option))
                fallback_owner.append((item, k))
    with torch.no_grad():
        shared_rows.sort(key=lambda row: len(row[1]), reverse=True)
        for start in range(0, len(shared_rows), batch_size):
            chunk = shared_rows[start : start + batch_size]
            length = max(len(sequence) for _, sequence in chunk)
            ids = torch.full((len(chunk), length), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, (_, sequence) in enumerate(chunk):
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            spans = [(len(contexts[item]) - 1, len(sequence)) for item, sequence in chunk]
            for (item, sequence), log_probs in zip(chunk, _log_probs_at(model, ids, mask, spans), strict=True):
                prefix = torch.tensor(sequence[len(contexts[item]) :], dtype=torch.long, device=log_probs.device)
                prefix_score = log_probs[torch.arange(len(prefix), device=log_probs.device), prefix].sum().item()
                last = log_probs[-1]
                for k, option in enumerate(candidates[item]):
                    scores[item][k] = prefix_score + last[option[-1]].item()
            if progress is not None:
                progress(len(chunk))
    if fallback:
        per_item = len(fallback) / max(len({owner for owner, _ in fallback_owner}), 1)
        flat = continuation_log_likelihoods(
            model, fallback, pad_token_id, batch_size, (lambda n: progress(n / per_item)) if progress else None
        )
        for (item, k), value in zip(fallback_owner, flat, strict=True):
            scores[item][k] = value
    return scores


def predict_by_likelihood(
    model, tokenizer, records: Sequence[Record], template: PromptTemplate, batch_size: int = 16, progress=None
) -> list[str]:
    """The most likely label of each record (e.g. ``"answer2"``), scoring ``"the correct answer is <label>"``
    (ties go to the first label)."""
    contexts, candidates, labels = [], [], []
    for record in records:
        contexts.append(prompt_token_ids(record, tokenizer, template))
        options = answer_labels(record)
        labels.append(options)
        candidates.append(
            [
                tokenizer(
                    template.response(Record(instruction="", output=f"the correct answer is {label}", answer=label)),
                    add_special_tokens=False,
                )["input_ids"]
                for label in options
            ]
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = choice_log_likelihoods(model, contexts, candidates, pad, batch_size, progress)
    return [
        options[max(range(len(options)), key=lambda k: row[k])] for options, row in zip(labels, scores, strict=True)
    ]
