"""Prompt templates (exact text) and the record → input_ids / labels / attention_mask step."""

import pytest
import torch

from smoa.tasks.prompts import (
    DORA,
    IGNORE_INDEX,
    SMOA,
    bos_prefix,
    collate_for_training,
    get_template,
    tokenize_for_training,
)
from smoa.tasks.records import Record

RECORD = Record(
    instruction="Pick one.\n\nAnswer format: true/false", output="the correct answer is true", answer="true"
)


def test_smoa_template_text():
    assert SMOA.prompt(RECORD) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "  \n\n### Instruction:\nPick one.\n\nAnswer format: true/false\n\n### Response:\n"
    )
    assert SMOA.response(RECORD) == "the correct answer is true"


def test_dora_template_is_indented_by_16_spaces():
    pad = " " * 16
    assert DORA.prompt(RECORD) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. "
        f"\n\n{pad}### Instruction:\n{pad}Pick one.\n\nAnswer format: true/false\n{pad}\n{pad}### Response:\n{pad}"
    )
    assert DORA.loss_on == "all"


def test_math_and_dialogue_templates():
    math = get_template("metamath").prompt(Record(instruction="What is 2+2?", output="", answer="4"))
    assert math.endswith("### Instruction:\nWhat is 2+2?\n\n### Response: Let's think step by step.")
    dialogue = get_template("dialogue")
    record = Record(instruction="Given ...", output="hi there", answer="hi there")
    assert dialogue.prompt(record) + dialogue.response(record) == "CONTEXT: Given ... TARGET: hi there"
    with pytest.raises(KeyError, match="unknown prompt template"):
        get_template("vicuna")


def test_response_only_labels(tiny_tokenizer):
    example = tokenize_for_training(RECORD, tiny_tokenizer, SMOA)
    ids, labels = example["input_ids"], example["labels"]
    prompt = tiny_tokenizer(SMOA.prompt(RECORD), add_special_tokens=False)["input_ids"]
    response = tiny_tokenizer(SMOA.response(RECORD), add_special_tokens=False)["input_ids"]
    assert ids == [tiny_tokenizer.bos_token_id, *prompt, *response, tiny_tokenizer.eos_token_id][: len(ids)]
    assert labels[: 1 + len(prompt)] == [IGNORE_INDEX] * (1 + len(prompt))
    assert labels[1 + len(prompt) :] == ids[1 + len(prompt) :]
    assert example["attention_mask"] == [1] * len(ids)
    assert len(ids) - 1 - len(prompt) <= 16  # response capped at 16 tokens


def test_bos_only_when_the_tokenizer_uses_one(tiny_tokenizer, plain_tokenizer):
    assert bos_prefix(tiny_tokenizer) == [tiny_tokenizer.bos_token_id]
    plain = plain_tokenizer
    assert bos_prefix(plain) == []
    example = tokenize_for_training(RECORD, plain, SMOA)
    assert example["input_ids"][0] != plain.bos_token_id
    assert example["input_ids"][-1] == plain.eos_token_id


def test_response_cap_and_prompt_cap(tiny_tokenizer):
    long = Record(instruction="word " * 400, output="x " * 40, answer="")
    example = tokenize_for_training(long, tiny_tokenizer, SMOA)
    masked = sum(label == IGNORE_INDEX for label in example["labels"])
    assert masked == 256 and len(example["input_ids"]) == 256 + 16
    assert example["input_ids"][-1] != tiny_tokenizer.eos_token_id  # cut response: no eos


def test_whole_sequence_loss(tiny_tokenizer):
    example = tokenize_for_training(RECORD, tiny_tokenizer, SMOA, loss_on="all")
    assert example["labels"] == example["input_ids"]
    dora = tokenize_for_training(Record(instruction="w " * 300, output="o", answer=""), tiny_tokenizer, DORA)
    assert len(dora["input_ids"]) == 256 and dora["labels"] == dora["input_ids"]
    with pytest.raises(ValueError, match="loss_on"):
        tokenize_for_training(RECORD, tiny_tokenizer, SMOA, loss_on="prompt")


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_ids_labels_and_mask(side):
    features = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": [8], "labels": [8], "attention_mask": [1]},
    ]
    batch = collate_for_training(features, pad_token_id=0, padding_side=side)
    assert batch["input_ids"].shape == (2, 3)
    expected_row = [8, 0, 0] if side == "right" else [0, 0, 8]
    assert batch["input_ids"][1].tolist() == expected_row
    assert batch["labels"][1].tolist() == [8 if v == 8 else -100 for v in expected_row]
    assert batch["attention_mask"][1].tolist() == [int(v == 8) for v in expected_row]
    assert batch["input_ids"].dtype == torch.long
