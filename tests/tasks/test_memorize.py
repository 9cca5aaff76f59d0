"""The memorisation task: seeded pairs, its scoring, the registry entry, and training and evaluation on it."""

from __future__ import annotations

import pytest

from smoa.evaluation import runner
from smoa.tasks import TASKS, load_eval_records, load_train_records, memorize
from smoa.tasks.prompts import get_template, tokenize_for_training


def test_pairs_are_seeded_distinct_hex_and_the_eval_set_is_the_train_set():
    records = load_train_records("memorize")
    assert len(records) == memorize.PAIRS == TASKS["memorize"].eval_size
    assert records == load_eval_records("memorize") == memorize.load_records()
    assert len({r.instruction for r in records}) == len(records)
    assert all(set(r.instruction + r.output) <= set(memorize.HEX_DIGITS) for r in records)
    assert all(len(r.instruction) == memorize.KEY_LENGTH and len(r.answer) == memorize.VALUE_LENGTH for r in records)
    assert memorize.load_records(seed=2) != records
    with pytest.raises(ValueError, match="key_length=1 is too short"):
        memorize.make_pairs(20, 1, 4, 0)
    with pytest.raises(ValueError, match="reads no train_file"):
        load_train_records("memorize", "pairs.json")


def test_character_accuracy_counts_positions_and_a_short_answer_loses_the_rest():
    assert memorize.char_accuracy("abcd", "abcd") == 1.0
    assert memorize.char_accuracy("abxd", "abcd") == 0.75
    assert memorize.char_accuracy("ab", "abcd") == 0.5
    assert memorize.char_accuracy("", "abcd") == 0.0
    assert memorize.extract_value("  abcdef\n", 4) == "abcd"


def test_the_template_trains_on_the_value_only(tiny_tokenizer):
    record = memorize.load_records(4)[0]
    template = get_template("memorize")
    assert template.prompt(record) == record.instruction + "="
    example = tokenize_for_training(record, tiny_tokenizer, template)
    trained = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    value = tiny_tokenizer(record.output, add_special_tokens=False)["input_ids"]
    assert trained == [*value, tiny_tokenizer.eos_token_id]


def test_scoring_gives_exact_match_and_character_accuracy(monkeypatch, tiny_tokenizer):
    records = memorize.load_records(3)
    values = [r.answer for r in records]
    outputs = [values[0], values[1][:4] + "zzzz", " " + values[2] + "ffff"]
    monkeypatch.setattr(runner, "generate_batched", lambda *a, **k: outputs)
    summary, predictions = runner.evaluate_records(None, tiny_tokenizer, TASKS["memorize"], records, progress=False)
    assert [p["correct"] for p in predictions] == [True, False, True]
    assert summary["accuracy"] == pytest.approx(200 / 3)
    assert summary["char_accuracy"] == pytest.approx(100 * (1 + 0.5 + 1) / 3)
    assert "character accuracy 83.33%" in runner.evaluation_line(summary)
