"""Your own data: instruction, chat or plain-text records from JSON, JSONL, CSV, Parquet or a ``datasets`` folder.

Formats (``data_format``; ``auto`` decides per file from the fields of its first record):

- ``instruction`` (Alpaca): ``instruction``, optional ``input``, ``output``; optional ``options`` (a list of
  strings) with ``answer`` (one of them, or its 0-based index) for multiple-choice evaluation. Loss on the output.
- ``chat``: ``messages``, a list of ``{"role", "content"}`` turns (ShareGPT's ``{"from", "value"}`` with
  ``human``/``gpt`` is read too), rendered with the tokenizer's chat template. Loss on the assistant turns.
- ``text``: ``text``; loss on every token.

``fields`` maps these names to the file's own column names, e.g. ``{instruction: question, output: answer}``.
A column that is a near-miss of an absent field (``inputs`` for ``input``) is refused rather than dropped; a
CSV row with more cells than the header, or a field holding NaN, is refused too.
Every record becomes a :class:`~smoa.tasks.records.Record`: ``instruction``/``input``/``output`` as named; chat
turns in ``messages``, with ``output`` = the last assistant turn; text in ``output``. ``answer`` is what the answer
metrics compare with (the gold option for multiple choice, else the output).

Files are read by suffix: ``.json`` (a list of objects, or JSON lines), ``.jsonl`` (``.gz`` allowed), ``.csv``,
``.tsv``, ``.parquet``; a folder is a ``datasets`` dataset saved with ``save_to_disk`` (a ``DatasetDict`` gives its
``train`` split, or ``split`` when given).
"""

from __future__ import annotations

import csv
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smoa.tasks.records import DataFormatError, Record, read_json_records

FORMATS = ("auto", "instruction", "chat", "text")
FIELDS = ("instruction", "input", "output", "messages", "text", "options", "answer")
SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".csv", ".tsv", ".parquet")
FORMAT_NAMES = {"alpaca": "instruction", "chat": "chat", "text": "text"}  # template → format
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def dataset_name(path: str | os.PathLike[str]) -> str:
    """The name results are labelled with: the file name without its suffixes (``data/arith.jsonl`` → ``arith``)."""
    name = Path(path).name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_rows(path: str | os.PathLike[str], split: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(location, row)`` pairs of a data file or ``save_to_disk`` folder; ``location`` ("line 3", "row 2",
    "item 0") is what error messages name.

    Raises:
        FileNotFoundError: nothing at ``path``.
        DataFormatError: an unknown suffix, unreadable content, or a row that is not a mapping.
    """
    path = Path(path)
    if path.is_dir():
        return _read_saved_dataset(path, split)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    name = path.name.lower()
    if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
        return read_json_records(path)
    if name.endswith((".csv", ".tsv")):
        return _read_delimited(path, "\t" if name.endswith(".tsv") else ",")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise DataFormatError(f"{path}: not a readable Parquet file ({error})") from None
        return [(f"row {index}", row) for index, row in enumerate(table.to_pylist())]
    raise DataFormatError(
        f"{path}: unknown data file type; use .json, .jsonl, .csv, .tsv, .parquet or a datasets save_to_disk folder"
    )


def _read_delimited(path: Path, delimiter: str) -> list[tuple[str, dict[str, Any]]]:
    """CSV/TSV rows read by :mod:`csv` itself (``newline=""``: a quoted cell keeps its newlines, and only ``\\n``,
    ``\\r\\n`` or ``\\r`` end a row), UTF-8 with or without a byte-order mark. A row's location is the line it starts
    on, the header being line 1."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter, strict=True)
            if not reader.fieldnames:
                raise DataFormatError(f"{path}: the file has no header row; its first line must name the columns")
            start = reader.line_num + 1
            for row in reader:
                if None in row:
                    raise DataFormatError(
                        f"{path}, line {start}: {len(reader.fieldnames) + len(row[None])} cells but "
                        f"{len(reader.fieldnames)} columns in the header; quote cells that hold the delimiter"
                    )
                rows.append((f"line {start}", dict(row)))
                start = reader.line_num + 1
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text ({error.reason}); save it as UTF-8") from None
    except csv.Error as error:
        raise DataFormatError(f"{path}, line {reader.line_num}: not valid CSV ({error})") from None
    return rows


def _read_saved_dataset(path: Path, split: str | None) -> list[tuple[str, dict[str, Any]]]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise DataFormatError(
            f"{path}: a folder must be a dataset saved with datasets' save_to_disk ({error})"
        ) from None
    if isinstance(data, DatasetDict):
        wanted = split or "train"
        if wanted not in data:
            raise DataFormatError(f"{path}: no split {wanted!r} (splits: {', '.join(data)}); name one of them")
        data = data[wanted]
    assert isinstance(data, Dataset)
    return [(f"row {index}", row) for index, row in enumerate(data.to_list())]


def detect_format(row: Mapping[str, Any], fields: Mapping[str, str], source: str | os.PathLike[str]) -> str:
    """``chat`` if the (mapped) ``messages`` field is present, else ``instruction`` with ``instruction`` (or
    ``output``), else ``text``; a :class:`DataFormatError` listing the fields when none fits."""

    def has(name: str) -> bool:
        return fields.get(name, name) in row

    if has("messages") or "conversations" in row:
        return "chat"
    if has("instruction") or (has("output") and not has("text")):
        return "instruction"
    if has("text"):
        return "text"
    present = ", ".join(sorted(map(str, row))) or "none"
    raise DataFormatError(
        f"{source}: cannot tell the format from the fields ({present}); records need instruction/output, "
        "messages, or text: name your columns with the recipe key fields, e.g. {instruction: question, "
        "output: answer} (smoa eval: --field instruction=question)"
    )


def _field(row: Mapping[str, Any], name: str, fields: Mapping[str, str], where: str, required: bool = True) -> Any:
    column = fields.get(name, name)
    if column not in row or row[column] is None:
        if not required:
            return None
        present = ", ".join(sorted(map(str, row))) or "none"
        mapped = f" (mapped from {name!r} by the recipe key fields)" if column != name else ""
        raise DataFormatError(
            f"{where}: missing field {column!r}{mapped} (fields present: {present}); add it, or map yours with "
            f"fields: {{{name}: <your column>}}"
        )
    return row[column]


def _text(value: Any, column: str, where: str, allow_empty: bool = False) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise DataFormatError(f"{where}: field {column!r} is {value} (a missing value, not text); give it text")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {column!r} should be text, got {type(value).__name__} ({value!r:.60})")
    if not allow_empty and not value.strip():
        raise DataFormatError(f"{where}: field {column!r} is empty; give it text or remove the record")
    return value


def _messages(value: Any, column: str, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"{where}: field {column!r} should be a non-empty list of turns, got {value!r:.60}")
    turns = []
    for index, turn in enumerate(value):
        at = f"{where}, {column}[{index}]"
        if not isinstance(turn, Mapping):
            raise DataFormatError(f"{at}: a turn should be an object with role and content, got {turn!r:.60}")
        if "role" in turn:
            role, content = turn.get("role"), turn.get("content")
        elif "from" in turn:
            role, content = _SHAREGPT_ROLES.get(str(turn.get("from")).lower(), turn.get("from")), turn.get("value")
        else:
            raise DataFormatError(f"{at}: a turn needs 'role' and 'content' (fields present: {', '.join(turn)})")
        if role not in ("system", "user", "assistant"):
            raise DataFormatError(f"{at}: role {role!r} is not one of system, user, assistant")
        turns.append((role, _text(content, "content", at, allow_empty=role != "assistant")))
    if not any(role == "assistant" for role, _ in turns):
        raise DataFormatError(f"{where}: the conversation has no assistant turn, so there is nothing to learn")
    return tuple(turns)


def _options_and_answer(row, fields, where, output: str) -> tuple[tuple[str, ...], str]:
    options = _field(row, "options", fields, where, required=False)
    answer = _field(row, "answer", fields, where, required=False)
    if options is None:
        return (), output if answer is None else _text(answer, fields.get("answer", "answer"), where)
    column = fields.get("options", "options")
    if not isinstance(options, list) or len(options) < 2:
        raise DataFormatError(f"{where}: field {column!r} should be a list of at least 2 options, got {options!r:.60}")
    options = tuple(_text(o, f"{column}[{i}]", where) for i, o in enumerate(options))
    gold = output if answer is None else answer
    if isinstance(gold, int) and not isinstance(gold, bool):
        if not 0 <= gold < len(options):
            raise DataFormatError(f"{where}: answer index {gold} is outside the {len(options)} options")
        return options, options[gold]
    gold = _text(gold, fields.get("answer", "answer"), where)
    if gold not in options:
        raise DataFormatError(f"{where}: the answer {gold!r:.60} is not one of the options {list(options)!r:.120}")
    return options, gold


def row_to_record(
    row: Mapping[str, Any],
    data_format: str,
    fields: Mapping[str, str],
    source: str,
    location: str,
    name: str,
    require_output: bool = True,
) -> Record:
    """One row as a :class:`Record` of ``data_format`` (``instruction``, ``chat`` or ``text``; see the module).
    ``require_output=False`` accepts instruction records without an output (prompts only, for calibration)."""
    where = f"{source}, {location}"
    uid = location.split()[-1]
    if data_format == "text":
        text = _text(_field(row, "text", fields, where), fields.get("text", "text"), where)
        return Record(instruction="", output=text, answer="", dataset=name, uid=uid)
    if data_format == "chat":
        column = fields.get("messages", "messages")
        if column not in row and "conversations" in row and "messages" not in fields:
            column = "conversations"
        messages = _messages(_field(row, "messages", {**fields, "messages": column}, where), column, where)
        last = next(content for role, content in reversed(messages) if role == "assistant")
        options, answer = _options_and_answer(row, fields, where, last)
        return Record(
            instruction="", output=last, answer=answer, dataset=name, uid=uid, messages=messages, options=options
        )
    instruction = _text(_field(row, "instruction", fields, where), fields.get("instruction", "instruction"), where)
    extra = _field(row, "input", fields, where, required=False)
    extra = "" if extra is None else _text(extra, fields.get("input", "input"), where, allow_empty=True)
    output = _field(row, "output", fields, where, required=require_output)
    output = "" if output is None else _text(output, fields.get("output", "output"), where)
    options, answer = _options_and_answer(row, fields, where, output)
    return Record(
        instruction=instruction, input=extra, output=output, answer=answer, dataset=name, uid=uid, options=options
    )


def load_records(
    path: str | os.PathLike[str],
    data_format: str = "auto",
    fields: Mapping[str, str] | None = None,
    name: str | None = None,
    split: str | None = None,
) -> tuple[list[Record], str]:
    """All records of a user data file, and the format they were read in.

    Args:
        path: a file or ``save_to_disk`` folder (see the module docstring).
        data_format: ``auto``, ``instruction``, ``chat`` or ``text``.
        fields: canonical field name → the file's column name.
        name: the dataset name records carry (default :func:`dataset_name`).
        split: the split of a saved ``DatasetDict`` (default ``train``).

    Raises:
        DataFormatError: an unreadable file, an empty one, or a record without what its format needs (the message
            names the file, the line or row, and the field).
    """
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise DataFormatError(f"recipe key fields: unknown field {unknown[0]!r}; map any of {', '.join(FIELDS)}")
    if data_format not in FORMATS:
        raise DataFormatError(f"recipe key data_format={data_format!r}: choose one of {', '.join(FORMATS)}")
    rows = read_rows(path, split)
    if not rows:
        raise DataFormatError(f"{path}: the file holds no records")
    _refuse_misspelt_columns(rows, fields, path)
    kind = detect_format(rows[0][1], fields, f"{path}, {rows[0][0]}") if data_format == "auto" else data_format
    label = name or dataset_name(path)
    records = [row_to_record(row, kind, fields, str(path), location, label) for location, row in rows]
    return records, kind


def _refuse_misspelt_columns(rows: Sequence[tuple[str, Mapping[str, Any]]], fields: Mapping[str, str], path) -> None:
    """A column that is not read but is a near-miss of a field that is absent (``inputs`` for ``input``) would be
    dropped from every record without a word: :class:`DataFormatError` names it and the mapping that reads it.
    Other extra columns (ids, metadata) are ignored, as in any table."""
    read = {fields.get(name, name) for name in FIELDS} | {"conversations"}
    columns: dict[str, str] = {}
    for location, row in rows:
        for column in row:
            columns.setdefault(str(column), location)
    for column, location in columns.items():
        if column in read:
            continue
        for field in difflib.get_close_matches(column.strip().lower(), FIELDS, n=1, cutoff=0.75):
            if fields.get(field, field) not in columns:
                raise DataFormatError(
                    f"{path}, {location}: column {column!r} is not a field this reader knows, and {field!r} is "
                    f"missing; rename the column, or map it with the recipe key fields: {{{field}: {column}}} "
                    f"(smoa eval: --field {field}={column})"
                )


def has_options(records: Sequence[Record]) -> bool:
    """Whether every record carries options (multiple choice); a mix is refused."""
    carrying = sum(1 for r in records if r.options)
    if 0 < carrying < len(records):
        first = next(r for r in records if not r.options)
        raise DataFormatError(
            f"{first.dataset}: {carrying} of {len(records)} records carry options, record {first.uid} does not; "
            "give every record options, or none"
        )
    return bool(records) and carrying == len(records)


def template_name(records: Sequence[Record]) -> str:
    """The template of your own records: ``chat`` (they carry messages), ``alpaca`` (an instruction) or ``text``."""
    if records and records[0].messages:
        return "chat"
    return "alpaca" if records and records[0].instruction else "text"


def parse_field_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["instruction=question", ...]`` (the ``--field`` options) → ``{"instruction": "question"}``; a malformed
    pair is a ValueError naming it."""
    fields = {}
    for text in pairs:
        name, sep, column = text.partition("=")
        if not sep or not name or not column:
            raise ValueError(f"--field {text!r} must be NAME=COLUMN, e.g. --field instruction=question")
        fields[name] = column
    return fields
