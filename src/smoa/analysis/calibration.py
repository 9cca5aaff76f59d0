"""Calibration text for the activation-covariance analysis: from a file of prompts or an evaluation task.

A file is either plain text (one prompt per non-blank line) or any data file training reads (instruction, chat or
text records in JSON, JSONL, CSV, Parquet or a saved dataset; :mod:`smoa.tasks.custom`). A task name (``boolq``,
``gsm8k``, ...) is resolved through :mod:`smoa.tasks` and formatted with the task's own prompt template.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TEXT_FIELDS = ("text", "instruction")


class CalibrationError(ValueError):
    """Calibration input that cannot be used; the message names the file or task and what to do."""


def _record_text(record) -> str:
    """The text of one of your own records: instruction (+ input), the conversation's turns, or the plain text."""
    if record.messages:
        return "\n".join(content for _, content in record.messages)
    if record.instruction:
        return record.instruction + (f"\n{record.input}" if record.input else "")
    return record.output


def read_prompts(path: str | os.PathLike[str], limit: int | None = None) -> list[str]:
    """The prompts of a calibration file: ``.txt`` holds one per line; any data file that training reads (JSON,
    JSONL, CSV, Parquet, a saved dataset; instruction, chat or text records, see :mod:`smoa.tasks.custom`) gives
    each record's instruction (+ input), conversation or text."""
    from smoa.tasks.custom import detect_format, read_rows, row_to_record
    from smoa.tasks.records import DataFormatError

    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration file {str(path)!r} does not exist")
    if path.suffix == ".txt":
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        texts = []
        try:
            for location, row in read_rows(path):  # each record in its own format: a file may mix them
                kind = detect_format(row, {}, f"{path}, {location}")
                texts.append(
                    _record_text(row_to_record(row, kind, {}, str(path), location, "calibration", require_output=False))
                )
        except DataFormatError as error:
            raise CalibrationError(str(error)) from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CalibrationError(f"calibration file {path} holds no non-empty text")
    return texts[:limit] if limit is not None else texts


def task_prompts(task: str, limit: int | None = None) -> list[str]:
    """Prompts of an evaluation task formatted with its template."""
    from smoa.tasks import load_eval_records, resolve_tasks
    from smoa.tasks.prompts import get_template

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
    if Path(source).is_file() or Path(source).is_dir():
        return read_prompts(source, limit)
    if Path(source).suffix in (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet") or os.sep in str(source):
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
