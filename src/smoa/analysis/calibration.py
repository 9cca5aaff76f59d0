"""Calibration text for the activation-covariance analysis: from a file of prompts or an evaluation task.

A file is either plain text (one prompt per non-blank line) or JSON lines / a JSON list of objects with a ``text``
field, or ``instruction`` (plus an optional ``input``) as in LLM-Adapters records. A task name (``boolq``,
``gsm8k``, ...) is resolved through :mod:`smoa.tasks` and formatted with the task's own prompt template.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TEXT_FIELDS = ("text", "instruction")


class CalibrationError(ValueError):
    """Calibration input that cannot be used; the message names the file or task and what to do."""


def _record_text(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        raise CalibrationError(f"{where}: expected an object with a 'text' or 'instruction' field, got {item!r:.80}")
    if isinstance(item.get("text"), str):
        return item["text"]
    if isinstance(item.get("instruction"), str):
        extra = item.get("input") or ""
        return item["instruction"] + (f"\n{extra}" if extra else "")
    raise CalibrationError(
        f"{where}: no 'text' or 'instruction' string field (keys: {sorted(item)}); give each record one of them"
    )


def read_prompts(path: str | os.PathLike[str], limit: int | None = None) -> list[str]:
    """The prompts of a calibration file (``.txt``: one per line; ``.jsonl``/``.json``: ``text``/``instruction``)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file {str(path)!r} does not exist")
    raw = path.read_text(encoding="utf-8")
    texts: list[str] = []
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as error:
            raise CalibrationError(f"{path}: not valid JSON ({error}); use a JSON list or JSON lines") from None
        if not isinstance(data, list):
            raise CalibrationError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        texts = [_record_text(item, f"{path} item {i}") for i, item in enumerate(data)]
    elif path.suffix == ".jsonl":
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise CalibrationError(f"{path} line {number}: not valid JSON ({error})") from None
            texts.append(_record_text(item, f"{path} line {number}"))
    else:
        texts = [line for line in raw.splitlines() if line.strip()]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CalibrationError(f"calibration file {path} holds no non-empty text")
    return texts[:limit] if limit is not None else texts


def task_prompts(task: str, limit: int | None = None) -> list[str]:
    """Prompts of an evaluation task formatted with its template (needs :mod:`smoa.tasks`)."""
    try:
        from smoa.tasks import load_eval_records, resolve_tasks
        from smoa.tasks.prompts import get_template
    except ImportError as error:
        raise CalibrationError(
            f"calibration {task!r} is not a file, and task names need the smoa.tasks module, which is not available "
            f"in this installation ({error}); pass a text or JSONL file of prompts instead"
        ) from None
    try:
        specs = resolve_tasks(task)
    except KeyError as error:
        raise CalibrationError(f"calibration {task!r} is neither an existing file nor a task: {error}") from None
    texts: list[str] = []
    per_task = None if limit is None else max(1, -(-limit // len(specs)))
    for spec in specs:
        template = get_template(spec.template)
        records = load_eval_records(spec.name)
        texts.extend(template.prompt(record) for record in records[:per_task])
    return texts[:limit] if limit is not None else texts


def calibration_prompts(source: str | os.PathLike[str], limit: int | None = None) -> list[str]:
    """A file of prompts if ``source`` is a file, else a task name (see :func:`task_prompts`)."""
    if Path(source).is_file():
        return read_prompts(source, limit)
    if Path(source).suffix in (".txt", ".jsonl", ".json") or os.sep in str(source):
        raise CalibrationError(f"calibration file {str(source)!r} does not exist")
    return task_prompts(str(source), limit)


class ByteTokenizer:
    """Stand-in for models saved without a tokenizer: UTF-8 bytes, each mapped to ``byte mod vocab_size``."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, text: str, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": [b % self.vocab_size for b in text.encode("utf-8")]}


def tokenize_prompts(texts: Sequence[str], tokenizer: Any, max_length: int = 128) -> list[Tensor]:
    """One ``(1, n)`` int64 tensor per text (no padding, so every position is a real token), cut to ``max_length``."""
    batches = []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])[:max_length]
        if ids:
            batches.append(torch.tensor([ids], dtype=torch.long))
    if not batches:
        raise CalibrationError("the calibration prompts tokenised to nothing; give non-empty prompts")
    return batches
