"""Multiple-choice scoring by log-likelihood: a fast alternative to generation for the commonsense sets.

For a record whose instruction offers labels ``l_1 .. l_n`` (its ``Answer format:`` line), each candidate response is
the training target ``"the correct answer is l_k"`` under the same template. The prediction is
``argmax_k Σ_t log p(c_k[t] | bos + prompt + c_k[:t])`` (summed, not length-normalised; the candidates share their
prefix, so only the label tokens decide). One forward pass per candidate, no decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from smoa.tasks.commonsense import answer_labels
from smoa.tasks.prompts import PromptTemplate, prompt_token_ids
from smoa.tasks.records import Record


@torch.no_grad()
def continuation_log_likelihoods(
    model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_token_id: int, batch_size: int = 16, progress=None
) -> list[float]:
    """``Σ log p(continuation | context)`` for each ``(context_ids, continuation_ids)`` pair (both non-empty).

    Sequences are right-padded into (B, L) batches sorted by length; token t of the continuation is scored from the
    logits at position ``len(context) + t - 1``.
    """
    device = next(model.parameters()).device
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
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1)
        for row, index in enumerate(chunk):
            context, continuation = pairs[index]
            positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1, device=device)
            targets = torch.tensor(list(continuation), device=device)
            scores[index] = log_probs[row, positions, targets].sum().item()
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
    device = next(model.parameters()).device
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
            log_probs = torch.log_softmax(
                model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), dim=-1
            )
            for row, (item, sequence) in enumerate(chunk):
                context_length = len(contexts[item])
                prefix = sequence[context_length:]
                positions = torch.arange(context_length - 1, len(sequence) - 1, device=device)
                prefix_score = log_probs[row, positions, torch.tensor(prefix, device=device)].sum().item()
                last = log_probs[row, len(sequence) - 1]
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
