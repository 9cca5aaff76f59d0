"""Batched generation with left padding and beam search."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from smoa.tasks import DecodingSettings


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    end = len(text)
    for stop in stop_strings:
        position = text.find(stop)
        if position >= 0:
            end = min(end, position)
    return text[:end]


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both (B, L_max), padded on the left so every prompt ends at column L_max."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if len(sequence):
            ids[row, length - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
            mask[row, length - len(sequence) :] = 1
    return ids.to(device), mask.to(device)


def generation_config(
    decoding: DecodingSettings, pad_token_id: int, eos_token_id: int | None, bos_token_id: int | None
):
    """The ``GenerationConfig`` for ``decoding``: beam search with its length penalty, or greedy when one beam.

    ``length_penalty`` and ``early_stopping`` only act in beam search; they are left out with ``num_beams == 1``,
    where transformers would warn that they are not valid (a task's penalty of 0.9 stays right for its beams).
    """
    from transformers import GenerationConfig

    beam = decoding.num_beams > 1
    beam_only = {"length_penalty": decoding.length_penalty, "early_stopping": True} if beam else {}
    return GenerationConfig(
        max_new_tokens=decoding.max_new_tokens,
        num_beams=decoding.num_beams,
        do_sample=False,
        no_repeat_ngram_size=decoding.no_repeat_ngram_size,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        **beam_only,
    )


@torch.no_grad()
def generate_batched(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    decoding: DecodingSettings,
    batch_size: int = 8,
    progress=None,
) -> list[str]:
    """Generate a continuation for every prompt (token ids, bos included), in input order.

    Prompts are sorted by length so batches pad little, left-padded, and decoded by beam search (no sampling) with
    ``decoding``'s limits. Each continuation is decoded without special tokens (generation stops at eos) and cut at
    the first stop string. ``progress`` is called with the number of prompts finished after each batch.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = generation_config(decoding, pad, tokenizer.eos_token_id, tokenizer.bos_token_id)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = left_pad([prompts[i] for i in chunk], pad, device)
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        new_tokens = generated[:, input_ids.shape[1] :]
        for index, tokens in zip(chunk, new_tokens, strict=True):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            outputs[index] = cut_at_stop_strings(text, decoding.stop_strings)
        if progress is not None:
            progress(len(chunk))
    return outputs
