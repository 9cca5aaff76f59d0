"""Memorisation of random key → value pairs (MoRA, arXiv 2405.12130, §3), as a task of the standard pipeline.

A pair is two seeded random hex strings; the model reads ``"{key}="`` and must produce ``value`` (loss on the value
only). The evaluation set *is* the training set: memorising the pairs is the task. Scoring compares the greedy
generation with the value: exact match, and character accuracy ``(1/v) Σ_i [pred_i = value_i]`` over the value's
``v`` positions (a missing character counts wrong).

``smoa train`` / ``compare`` / ``study`` with ``task: memorize`` train on :data:`PAIRS` pairs and evaluate on the
same pairs. The pre-declared experiment of docs/evidence.md runs the same pairs through a faster, cached path
(:mod:`smoa.evidence`).
"""

from __future__ import annotations

import random

from smoa.tasks.records import Record

HEX_DIGITS = "0123456789abcdef"
PAIRS, KEY_LENGTH, VALUE_LENGTH, PAIRS_SEED = 512, 8, 8, 1  # the task's fixed pairs (the experiment's seed 1)


def make_pairs(n_pairs: int, key_length: int, value_length: int, seed: int) -> list[tuple[str, str]]:
    """``n_pairs`` (key, value) hex strings from ``random.Random(seed)``; keys are distinct."""
    if 16**key_length < 2 * n_pairs:
        raise ValueError(f"key_length={key_length} is too short for {n_pairs} distinct keys; make it longer")
    rng = random.Random(seed)
    keys: dict[str, None] = {}
    while len(keys) < n_pairs:
        keys["".join(rng.choice(HEX_DIGITS) for _ in range(key_length))] = None
    return [(key, "".join(rng.choice(HEX_DIGITS) for _ in range(value_length))) for key in keys]


def load_records(
    n_pairs: int = PAIRS, key_length: int = KEY_LENGTH, value_length: int = VALUE_LENGTH, seed: int = PAIRS_SEED
) -> list[Record]:
    """The pairs as records: ``instruction`` the key, ``output`` and ``answer`` the value."""
    return [
        Record(instruction=key, output=value, answer=value, dataset="memorize", uid=str(index))
        for index, (key, value) in enumerate(make_pairs(n_pairs, key_length, value_length, seed))
    ]


def extract_value(text: str, length: int) -> str:
    """The first ``length`` characters of the generation after leading whitespace (what is scored)."""
    return text.strip()[:length]


def char_accuracy(prediction: str, value: str) -> float:
    """Share of the value's positions the prediction gets right, ``(1/v) Σ_i [prediction_i = value_i]``."""
    if not value:
        raise ValueError("a memorisation value must not be empty")
    return sum(p == v for p, v in zip(prediction, value, strict=False)) / len(value)
