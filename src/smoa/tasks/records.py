"""The record every task produces, and the JSON / JSONL readers that report bad input precisely.

A :class:`Record` is the LLM-Adapters example ``{"instruction", "input", "output", "answer"}`` plus where it came
from. ``output`` is the training target text; ``answer`` is what scoring compares against (a choice label such as
``answer3``, a number for math, the gold response for dialogue).
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoa._io import write_text_atomic

VALIDATION_SIZE = 120  # the papers' held-out examples for model selection


class DataFormatError(ValueError):
    """Input data is malformed; the message names the file, the line (or item) and the field, and what to do."""


@dataclass(frozen=True)
class Record:
    """One example, as a model sees it before templating.

    Attributes:
        instruction: the task text (for commonsense: the LLM-Adapters instruction with its "Answer format" line).
        output: the training target (commonsense: ``"the correct answer is X"``; math: a worked solution ending
            ``"The answer is: N"``; dialogue: the gold response).
        answer: the gold used by scoring (``"answer3"``, ``"true"``, ``"18"``, or the gold response).
        input: LLM-Adapters' (always empty) input field.
        dataset: the dataset name (``"boolq"``, ``"gsm8k"``, ``"convai2"`` ...).
        uid: a stable identifier inside the dataset (index or native id).
        references: every gold response for the same context (dialogue multi-reference); empty elsewhere.
        messages: a conversation's ``(role, content)`` turns (your own chat data); empty elsewhere.
        options: the candidate answers of a multiple-choice record of your own data (``answer`` is one of them).
    """

    instruction: str
    output: str
    answer: str
    input: str = ""
    dataset: str = ""
    uid: str = ""
    references: tuple[str, ...] = field(default=())
    messages: tuple[tuple[str, str], ...] = field(default=())
    options: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The LLM-Adapters form: ``{"instruction", "input", "output", "answer"}``."""
        return {"instruction": self.instruction, "input": self.input, "output": self.output, "answer": self.answer}


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (``.gz`` allowed, a leading byte-order mark dropped); bytes that are not UTF-8
    raise :class:`DataFormatError` naming the file and the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark is not content
            except UnicodeDecodeError as error:
                raise DataFormatError(
                    f"{path}, line {number}: not UTF-8 text ({error.reason} at byte {error.start} of the line); "
                    "save the file as UTF-8"
                ) from None


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file (``.gz`` allowed).

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: a line is not valid JSON or not an object (the message has file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    for number, line in enumerate(text_lines(path), start=1):
        if not line.strip():
            continue
        value = _parse_json(line, path, number)
        if not isinstance(value, dict):
            raise DataFormatError(f"{path}, line {number}: expected a JSON object, got {type(value).__name__}")
        yield number, value


def _parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """``json.loads(text)``; a syntax error becomes a :class:`DataFormatError` naming the file and line (``line``:
    the number of a JSON-lines record, else the line within ``text``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {line if line is not None else error.lineno}"
        fix = "; fix or remove this line" if line is not None else ""
        raise DataFormatError(f"{path}, {where}: not valid JSON ({error.msg} at column {error.colno}){fix}") from None


def read_json_records(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """Read a JSON file holding a list of objects, or a JSON-lines file; return ``(location, object)`` pairs.

    ``location`` is ``"line N"`` for JSON lines and ``"item N"`` (0-based, the list index) for a JSON list, ready to
    be put into an error message by :func:`require`. The format is decided by content, not by the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    text = "".join(text_lines(path))
    stripped = text.lstrip()
    if stripped.startswith("["):
        value = _parse_json(text, path)
        rows = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise DataFormatError(f"{path}, item {index}: expected a JSON object, got {type(item).__name__}")
            rows.append((f"item {index}", item))
        return rows
    return [(f"line {number}", item) for number, item in read_jsonl(path)]


def require(
    obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], source: str | os.PathLike[str], location: str
) -> Any:
    """``obj[name]``, checked to be of type ``kind``; otherwise a :class:`DataFormatError` naming file, place, field."""
    if name not in obj:
        present = ", ".join(sorted(map(str, obj))) or "none"
        raise DataFormatError(f"{source}, {location}: missing field {name!r} (fields present: {present})")
    value = obj[name]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFormatError(
            f"{source}, {location}: field {name!r} should be {expected}, got {type(value).__name__} ({value!r:.60})"
        )
    return value


def write_jsonl(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write objects as JSON lines atomically (:mod:`smoa._io`); a NaN or infinite value is refused
    (:class:`smoa._io.NonFiniteResultError`), never written."""
    _refuse_non_finite(path, list(rows))
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows))


def write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Write one JSON document atomically (indented, UTF-8); a NaN or infinite value is refused, never written."""
    _refuse_non_finite(path, value)
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def _refuse_non_finite(path: str | os.PathLike[str], value: Any) -> None:
    from smoa._io import NonFiniteResultError, first_non_finite

    found = first_non_finite(value)
    if found is not None:
        raise NonFiniteResultError(
            f"{path}: {found} is not a finite number (NaN or infinite); nothing was written. See the error before "
            "this one, or check the model's weights"
        )


def split_validation(
    records: Sequence[Record], size: int = VALIDATION_SIZE, seed: int = 42
) -> tuple[list[Record], list[Record]]:
    """Hold out ``size`` records chosen with ``random.Random(seed)``; returns ``(train, validation)``, order kept.

    Serves every task family (commonsense, math, dialogue, your own data)."""
    if not 0 <= size <= len(records):
        raise ValueError(f"cannot hold out {size} of {len(records)} records")
    held = set(random.Random(seed).sample(range(len(records)), size))
    train = [r for i, r in enumerate(records) if i not in held]
    validation = [r for i, r in enumerate(records) if i in held]
    return train, validation
