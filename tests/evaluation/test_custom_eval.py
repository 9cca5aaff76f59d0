"""Evaluation on your own records: the loss is the training loss, choices are the likeliest option, metrics score."""

from __future__ import annotations

import math
import re

import pytest
import torch

from smoa.evaluation.custom import evaluate_own_data, mean_token_loss, resolve_metric
from smoa.tasks.prompts import get_template, prompt_token_ids, tokenize_for_training
from smoa.tasks.records import Record
from smoa.tasks.scoring import answer_is_correct, normalize_answer

RECORDS = [
    Record(instruction="Sky colour?", output="blue", answer="blue", dataset="mine", uid="0", options=("red", "blue")),
    Record(instruction="Grass?", output="green", answer="green", dataset="mine", uid="1", options=("green", "pink")),
    Record(instruction="Sun?", output="true", answer="true", dataset="mine", uid="2", options=("true", "false")),
]


def test_answer_metrics():
    assert normalize_answer("  The  Answer. ") == "the answer"
    assert answer_is_correct("Paris.", "paris", "exact_match")
    assert not answer_is_correct("It is Paris", "paris", "exact_match")
    assert answer_is_correct("It is Paris", "paris", "contains")
    pattern = re.compile(r"#### (\S+)")
    assert answer_is_correct("so 4 + 1 = 5 #### 5", "5", "regex", pattern)
    assert answer_is_correct("so #### 5", "work ... #### 5", "regex", pattern)  # gold in the trained form
    assert not answer_is_correct("no marker 5", "5", "regex", pattern)
    with pytest.raises(ValueError, match="unknown answer metric"):
        answer_is_correct("a", "a", "bleu")


def test_metric_resolution():
    alpaca, text = get_template("alpaca"), get_template("text")
    plain = [Record(instruction="q", output="a", answer="a")]
    assert resolve_metric("auto", RECORDS, alpaca) == "choice"
    assert resolve_metric("auto", plain, alpaca) == "exact_match"
    assert resolve_metric("auto", plain, text) == "none"
    with pytest.raises(ValueError, match="needs records with options"):
        resolve_metric("choice", plain, alpaca)
    with pytest.raises(ValueError, match="plain-text records have no answers"):
        resolve_metric("contains", plain, text)


def test_mean_token_loss_is_the_token_weighted_training_loss(tiny_model, tiny_tokenizer):
    template = get_template("alpaca")
    total = count = 0.0
    for record in RECORDS:
        example = tokenize_for_training(record, tiny_tokenizer, template)
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
        tokens = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += tiny_model(input_ids=ids, labels=labels).loss.item() * tokens
        count += tokens
    loss, tokens = mean_token_loss(tiny_model, tiny_tokenizer, RECORDS, template, batch_size=2)
    assert tokens == count and loss == pytest.approx(total / count, rel=1e-5)


def test_choice_is_the_likeliest_option(tiny_model, tiny_tokenizer):
    template = get_template("alpaca")
    result = evaluate_own_data(tiny_model, tiny_tokenizer, RECORDS, name="mine", template=template, metric="auto")
    summary = result["datasets"]["mine"]
    assert result["task"] == "custom" and summary["display"] == "mine" and summary["metric"] == "choice"
    assert summary["perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
    expected = []
    for record in RECORDS:
        prompt = prompt_token_ids(record, tiny_tokenizer, template)
        scores = []
        for option in record.options:
            continuation = tiny_tokenizer(option, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + continuation])
            with torch.no_grad():
                log_probs = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)
            scores.append(sum(log_probs[len(prompt) - 1 + t, c].item() for t, c in enumerate(continuation)))
        expected.append(record.options[max(range(len(scores)), key=scores.__getitem__)])
    predictions = result["predictions"]["mine"]
    assert [p["prediction"] for p in predictions] == expected
    assert summary["correct"] == sum(p == r.answer for p, r in zip(expected, RECORDS, strict=True))
    assert summary["accuracy"] == pytest.approx(100 * summary["correct"] / 3)


def test_generation_metrics_score_the_saved_generations(tiny_model, tiny_tokenizer):
    records = [Record(instruction=r.instruction, output=r.output, answer=r.answer, uid=r.uid) for r in RECORDS]
    result = evaluate_own_data(
        tiny_model, tiny_tokenizer, records, name="mine", template=get_template("alpaca"), metric="contains",
        max_new_tokens=4,
    )  # fmt: skip
    predictions = result["predictions"]["mine"]
    assert len(predictions) == 3 and all(isinstance(p["prediction"], str) for p in predictions)
    assert [p["correct"] for p in predictions] == [
        answer_is_correct(p["prediction"], p["answer"], "contains") for p in predictions
    ]
    none = evaluate_own_data(
        tiny_model, tiny_tokenizer, records, name="mine", template=get_template("alpaca"), metric="none"
    )
    assert "accuracy" not in none["datasets"]["mine"] and none["average"] is None
    with pytest.raises(ValueError, match="needs answer_regex"):
        evaluate_own_data(
            tiny_model, tiny_tokenizer, records, name="m", template=get_template("alpaca"), metric="regex"
        )
