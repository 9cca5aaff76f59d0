"""Your own data: every file type and format is read into the same records; bad rows are named precisely."""

from __future__ import annotations

import csv
import json

import pytest

from smoa.tasks.custom import dataset_name, has_options, load_records, template_name
from smoa.tasks.prompts import (
    IGNORE_INDEX,
    chat_segments,
    get_template,
    prompt_token_ids,
    tokenize_for_training,
)
from smoa.tasks.records import DataFormatError, Record
from tests import tiny

ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Name the colour.", "input": "sky", "output": "blue"},
    {"instruction": "Add 1 and 1.", "input": "", "output": "2"},
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind == "disk":
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "disk"])
def test_every_file_type_gives_the_same_records(tmp_path, kind):
    path = write(tmp_path / (f"arith.{kind}" if kind != "disk" else "arith"), ROWS, kind)
    records, found = load_records(path)
    assert found == "instruction"
    assert [(r.instruction, r.input, r.output, r.answer) for r in records] == [
        (row["instruction"], row["input"], row["output"], row["output"]) for row in ROWS
    ]
    assert {r.dataset for r in records} == {"arith"}
    assert template_name(records) == "alpaca"


def test_a_saved_dataset_dict_gives_its_train_split_or_the_named_one(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:1])}).save_to_disk(tmp_path / "d")
    assert len(load_records(tmp_path / "d")[0]) == 3
    assert len(load_records(tmp_path / "d", split="test")[0]) == 1
    with pytest.raises(DataFormatError, match=r"no split 'dev' .*train, test"):
        load_records(tmp_path / "d", split="dev")


def test_field_names_are_mapped(tmp_path):
    rows = [{"question": "Add 2 and 3.", "reply": "5"}]
    path = write(tmp_path / "q.jsonl", rows, "jsonl")
    [record], found = load_records(path, fields={"instruction": "question", "output": "reply"})
    assert found == "instruction" and record.instruction == "Add 2 and 3." and record.output == "5"


def test_chat_and_sharegpt_records(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    records, found = load_records(write(tmp_path / "c.jsonl", rows, "jsonl"))
    assert found == "chat" and records[0].messages == (("user", "Hi"), ("assistant", "Hello"))
    assert records[1].output == records[1].answer == "4" and template_name(records) == "chat"
    sharegpt = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    [record], found = load_records(write(tmp_path / "s.jsonl", sharegpt, "jsonl"))
    assert found == "chat" and record.messages == (("user", "Hi"), ("assistant", "Hello"))


def test_text_records(tmp_path):
    records, found = load_records(write(tmp_path / "t.jsonl", [{"text": "one two"}, {"text": "three"}], "jsonl"))
    assert found == "text" and [r.output for r in records] == ["one two", "three"]
    assert template_name(records) == "text"


def test_multiple_choice_records(tmp_path):
    rows = [
        {"instruction": "Sky colour?", "output": "blue", "options": ["red", "blue"]},
        {"instruction": "Grass colour?", "output": "green", "options": ["green", "pink"], "answer": 0},
    ]
    records, _ = load_records(write(tmp_path / "mc.jsonl", rows, "jsonl"))
    assert [r.answer for r in records] == ["blue", "green"] and has_options(records)
    bad = [{"instruction": "Sky?", "output": "blue", "options": ["red", "green"]}]
    with pytest.raises(DataFormatError, match=r"mc2.jsonl, line 1: the answer 'blue' is not one of the options"):
        load_records(write(tmp_path / "mc2.jsonl", bad, "jsonl"))
    with pytest.raises(DataFormatError, match="1 of 2 records carry options"):
        has_options([records[0], Record(instruction="x", output="y", answer="y", dataset="mc", uid="9")])


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        ([{"instruction": "a"}], {}, r"x.jsonl, line 1: missing field 'output' \(fields present: instruction\)"),
        ([{"question": "a", "reply": "b"}], {}, "cannot tell the format from the fields"),
        ([{"q": "a"}], {"fields": {"instruction": "q", "output": "r"}}, "missing field 'r' .mapped from 'output'"),
        ([{"instruction": "a", "output": " "}], {}, "line 1: field 'output' is empty"),
        ([{"instruction": ["a"], "output": "b"}], {}, "field 'instruction' should be text, got list"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], {}, "has no assistant turn"),
        ([{"messages": [{"role": "bot", "content": "hi"}]}], {}, r"messages\[0\]: role 'bot' is not one of"),
        ([{"text": "a"}], {"fields": {"prompt": "q"}}, "recipe key fields: unknown field 'prompt'"),
        ([{"text": "a"}], {"data_format": "alpaca"}, "recipe key data_format='alpaca'"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, options, message):
    path = write(tmp_path / "x.jsonl", rows, "jsonl")
    with pytest.raises(DataFormatError, match=message):
        load_records(path, **options)


def test_csv_line_numbers_count_the_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\nAdd 1 and 1.,2\nAdd 2 and 2.,\n")
    with pytest.raises(DataFormatError, match=r"d.csv, line 3: field 'output' is empty"):
        load_records(path)


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
def test_a_byte_order_mark_changes_nothing(tmp_path, kind):
    path = write(tmp_path / f"d.{kind}", ROWS, kind)
    plain, _ = load_records(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked, _ = load_records(path)
    assert marked == plain and marked[1].input == "sky"


def test_quoted_csv_cells_keep_their_newlines_and_line_separators(tmp_path):
    rows = [
        {"instruction": "Two lines:\nfirst\r\nsecond", "input": "a\u2028b", "output": "x\ry"},
        {"instruction": "Next", "input": "", "output": "z"},
    ]
    for kind in ("csv", "jsonl", "parquet"):
        records, _ = load_records(write(tmp_path / f"d.{kind}", rows, kind))
        assert [(r.instruction, r.input, r.output) for r in records] == [tuple(r.values()) for r in rows], kind
    path = tmp_path / "late.csv"
    path.write_text('instruction,output\n"multi\nline",1\nbad,\n', newline="")
    with pytest.raises(DataFormatError, match=r"late.csv, line 4: field 'output' is empty"):
        load_records(path)  # the location is the line the row starts on


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("instruction,output\na,b,c\n", r"line 2: 3 cells but 2 columns"),
        ('instruction,output\n"a,b\n', r"not valid CSV"),
        ("instructions,output\na,b\n", r"column 'instructions' .* 'instruction' is missing.*fields: \{instruction: "),
        ("instruction,inputs,output\na,b,c\n", r"column 'inputs' .* 'input' is missing.*--field input=inputs"),
    ],
)
def test_csv_rows_that_would_lose_cells_are_refused(tmp_path, text, message):
    path = tmp_path / "d.csv"
    path.write_text(text, newline="")
    with pytest.raises(DataFormatError, match=message):
        load_records(path)


def test_extra_columns_that_are_no_near_miss_are_ignored_and_a_mapped_one_is_read(tmp_path):
    records, _ = load_records(write(tmp_path / "d.jsonl", [{"id": 7, **ROWS[1]}], "jsonl"))
    assert records[0].input == "sky"
    rows = [{"instruction": "Colour?", "inputs": "sky", "output": "blue"}]
    records, _ = load_records(write(tmp_path / "m.jsonl", rows, "jsonl"), fields={"input": "inputs"})
    assert records[0].input == "sky"


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_a_json_nan_is_not_trained_as_text(tmp_path, value):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": ' + value + "}\n")
    with pytest.raises(DataFormatError, match=r"d.jsonl, line 1: field 'output' is .*a missing value, not text"):
        load_records(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(DataFormatError, match="unknown data file type"):
        load_records(tmp_path / "d.xml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(tmp_path / "none.jsonl")


def test_dataset_name():
    assert dataset_name("data/arith.jsonl") == "arith" and dataset_name("a/b.jsonl.gz") == "b"
    assert dataset_name("folder/my_set") == "my_set"


# --------------------------------------------------------------------------------------------- templates
@pytest.fixture(scope="module")
def tokenizer():
    tok = tiny.build_tiny_tokenizer(add_bos=True, corpus=["<|user|>", "<|assistant|>", "Hello there", "2+2? 4"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_alpaca_uses_its_input_section_only_when_there_is_an_input():
    template = get_template("alpaca")
    plain = template.prompt(Record(instruction="Add 2 and 3.", output="5", answer="5"))
    with_input = template.prompt(Record(instruction="Name the colour.", input="sky", output="blue", answer="blue"))
    assert "### Input:" not in plain and plain.endswith("### Instruction:\nAdd 2 and 3.\n\n### Response:\n")
    assert with_input.endswith("### Instruction:\nName the colour.\n\n### Input:\nsky\n\n### Response:\n")


def test_chat_loss_covers_exactly_the_assistant_turns(tokenizer):
    messages = (("user", "Hi"), ("assistant", "Hello there"), ("user", "2+2?"), ("assistant", "4"))
    record = Record(instruction="", output="4", answer="4", messages=messages)
    pieces = chat_segments(record, tokenizer)
    whole = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)
    assert "".join(text for text, _ in pieces) == whole
    assert [text for text, trained in pieces if trained] == ["Hello there</s>", "4</s>"]
    example = tokenize_for_training(record, tokenizer, get_template("chat"))
    trained = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE_INDEX]
    expected = tokenizer("Hello there</s>", add_special_tokens=False)["input_ids"]
    expected += tokenizer("4</s>", add_special_tokens=False)["input_ids"]
    assert trained == expected
    # evaluation reads the conversation up to the last assistant turn, ending with the generation prompt
    prompt = tokenizer.decode(prompt_token_ids(record, tokenizer, get_template("chat")))
    assert prompt == whole[: whole.rindex("4</s>")] and prompt.endswith("<|assistant|>")


def test_chat_needs_a_chat_template():
    tok = tiny.build_tiny_tokenizer(add_bos=True)
    record = Record(instruction="", output="a", answer="a", messages=(("user", "q"), ("assistant", "a")))
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_for_training(record, tok, get_template("chat"))


def test_text_template_trains_on_every_token(tokenizer):
    example = tokenize_for_training(
        Record(instruction="", output="Hello there", answer=""), tokenizer, get_template("text")
    )
    assert example["labels"] == example["input_ids"]
    assert example["input_ids"][-1] == tokenizer.eos_token_id
