"""Training and evaluating on your own data: instruction, chat and text files, checked before the model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smoa.cli.main import main
from smoa.tasks.records import DataFormatError
from smoa.training import load_recipe, run_training
from smoa.training import trainer as trainer_module
from smoa.training.recipe import RecipeError
from tests.training.conftest import WORDS, tiny_recipe_values


def quiet(*args, **kwargs):
    pass


def instruction_rows(n: int) -> list[dict]:
    return [
        {"instruction": f"is {WORDS[i % 10]} before {WORDS[(i + 3) % 10]}?", "output": ["true", "false"][i % 2]}
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def custom_values(model_dir, train_file, output_dir, **extra):
    values = tiny_recipe_values(model_dir, train_file, output_dir, task="custom", max_steps=2, eval_tasks=None)
    values.update(extra)
    return values


def test_instruction_file_trains_and_evaluates_on_its_validation_split(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "order.jsonl", instruction_rows(24))
    recipe = load_recipe(None, **custom_values(tiny_model_dir, data, tmp_path / "run", max_new_tokens=3))
    assert recipe.eval_tasks == ["custom"]
    result = run_training(recipe, log=quiet)
    assert result.train_examples == 16
    summary = result.evaluation["custom"]["datasets"]["order"]
    assert summary["display"] == "order" and summary["metric"] == "exact_match" and summary["total"] == 8
    assert summary["val_loss"] > 0 and summary["perplexity"] > 1 and 0 <= summary["accuracy"] <= 100
    saved = [json.loads(line) for line in Path(summary["predictions_file"]).read_text().splitlines()]
    assert len(saved) == 8 and {"uid", "prediction", "answer", "correct"} <= set(saved[0])
    assert summary["correct"] == sum(row["correct"] for row in saved)


def test_eval_file_multiple_choice_and_chat(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "order.jsonl", instruction_rows(20))
    held = [{**row, "options": ["true", "false"]} for row in instruction_rows(6)]
    held_file = write_jsonl(tmp_path / "held.jsonl", held)
    values = custom_values(tiny_model_dir, data, tmp_path / "mc", eval_file=str(held_file))
    result = run_training(load_recipe(None, **values), log=quiet)
    summary = result.evaluation["custom"]["datasets"]["order"]
    assert summary["metric"] == "choice" and summary["total"] == 6
    assert result.evaluation["custom"]["source"] == str(held_file)

    chat_model = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, chat_model)
    config = json.loads((chat_model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} </s> {% endfor %}"
    config["chat_template"] += "{% if add_generation_prompt %}assistant: {% endif %}"
    (chat_model / "tokenizer_config.json").write_text(json.dumps(config))
    turns = [
        {"messages": [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]}
        for row in instruction_rows(20)
    ]
    chat = write_jsonl(tmp_path / "chat.jsonl", turns)
    result = run_training(load_recipe(None, **custom_values(chat_model, chat, tmp_path / "chat", max_new_tokens=2)))
    assert result.evaluation["custom"]["template"] == "chat"
    assert result.evaluation["custom"]["datasets"]["chat"]["loss_tokens"] > 0


def test_bad_data_fails_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    def no_model(recipe):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(trainer_module, "build_model", no_model)
    bad = write_jsonl(tmp_path / "bad.jsonl", [*instruction_rows(10), {"instruction": "x"}])
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 11: missing field 'output'"):
        run_training(load_recipe(None, **custom_values(tiny_model_dir, bad, tmp_path / "a")), log=quiet)
    small = write_jsonl(tmp_path / "small.jsonl", instruction_rows(5))
    with pytest.raises(RecipeError, match=r"val_size=8 leaves no training data \(5 records in .*small.jsonl\)"):
        run_training(load_recipe(None, **custom_values(tiny_model_dir, small, tmp_path / "b")), log=quiet)
    good = write_jsonl(tmp_path / "good.jsonl", instruction_rows(20))
    for rows, message in (
        ([{"instruction": "x"}], "held.jsonl, line 1: missing field 'output'"),
        ([{"text": "plain"}], "held.jsonl holds text records, but .*good.jsonl holds instruction records"),
    ):
        held = write_jsonl(tmp_path / "held.jsonl", rows)
        with pytest.raises(DataFormatError, match=message):
            run_training(
                load_recipe(None, **custom_values(tiny_model_dir, good, tmp_path / "c", eval_file=str(held))), log=quiet
            )


def test_recipe_checks_for_own_data():
    with pytest.raises(RecipeError, match="train_file is required with task=custom"):
        load_recipe(None, task="custom")
    with pytest.raises(RecipeError, match=r"fields\.output=3"):
        load_recipe(None, task="custom", train_file="a.jsonl", fields={"output": 3})
    with pytest.raises(RecipeError, match="eval_metric='bleu'"):
        load_recipe(None, task="custom", train_file="a.jsonl", eval_metric="bleu")


def test_cli_names_a_bad_row_in_one_line(tiny_model_dir, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": ""}])
    code = main(["train", "--task", "custom", "--model", str(tiny_model_dir), "--set", f"train_file={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bad.jsonl, line 1: field 'output' is empty" in err
