"""Settings whose mistake would only show after training are refused first, in one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoa.cli.main import main
from smoa.training import load_recipe, run_training
from smoa.training import trainer as trainer_module
from smoa.training.preflight import check_loss_tokens, loss_token_count
from smoa.training.recipe import RecipeError
from tests.training.conftest import WORDS, tiny_recipe_values


def quiet(*args, **kwargs):
    pass


@pytest.fixture
def no_model(monkeypatch):
    def refuse(recipe):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(trainer_module, "build_model", refuse)


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the settings were checked")

    monkeypatch.setattr(trainer_module, "trainer_classes", refuse)


def own_rows(n: int) -> list[dict]:
    return [{"instruction": f"is {WORDS[i % 10]} first?", "output": ["true", "false"][i % 2]} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"eval_tasks": ["nope"]}, r"recipe key eval_tasks: unknown task 'nope'"),
        ({"eval_tasks": ["gsm8k"], "eval_method": "loglik"}, r"eval_method='loglik' scores commonsense sets only"),
        ({"eval_tasks": ["gsm8k"], "eval_method": "cloze"}, r"eval_method='cloze' scores commonsense sets only"),
        (
            {"eval_tasks": ["piqa"], "eval_method": "cloze", "eval_data_dir": "."},
            r"eval_method='cloze' reads the packaged",
        ),
        ({"eval_tasks": ["boolq"], "eval_data_dir": "MISSING"}, r"recipe key eval_data_dir='.*MISSING'"),
        ({"eval_tasks": ["custom"]}, r"'custom' evaluates your own data and needs task=custom"),
    ],
)
def test_evaluation_settings_are_checked_before_the_model_loads(
    extra, message, tiny_model_dir, train_file, tmp_path, no_model
):
    if extra.get("eval_data_dir") == "MISSING":
        extra = {**extra, "eval_data_dir": str(tmp_path / "MISSING")}
    recipe = load_recipe(None, **tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", **extra))
    with pytest.raises((RecipeError, FileNotFoundError), match=message):
        run_training(recipe, log=quiet)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"eval_metric": "regex"}, r"eval_metric='regex' needs answer_regex"),
        ({"eval_metric": "regex", "answer_regex": "("}, r"answer_regex='\(' is not a valid regex"),
        ({"eval_metric": "choice"}, r"eval_metric='choice' needs records with options"),
    ],
)
def test_own_data_metric_is_checked_before_the_model_loads(extra, message, tiny_model_dir, tmp_path, no_model):
    data = write_jsonl(tmp_path / "own.jsonl", own_rows(24))
    values = tiny_recipe_values(tiny_model_dir, data, tmp_path / "run", task="custom", eval_tasks=None, **extra)
    with pytest.raises(RecipeError, match=message):
        run_training(load_recipe(None, **values), log=quiet)


def test_keys_that_would_be_ignored_are_refused(tiny_model_dir, train_file, tmp_path):
    base = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run")
    with pytest.raises(RecipeError, match=r"eval_file=.* applies with task=custom only"):
        load_recipe(None, **base, eval_file="held.jsonl")
    with pytest.raises(RecipeError, match=r"answer_regex=.* applies with eval_metric=regex only"):
        load_recipe(None, **{**base, "task": "custom"}, answer_regex=r"(\d+)")


def test_truncation_that_leaves_no_loss_token_is_refused_before_training(
    tiny_model_dir, train_file, tmp_path, no_training
):
    recipe = load_recipe(None, **tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_length=4))
    with pytest.raises(RecipeError, match=r"max_length: after truncation to max_length=4 no training example"):
        run_training(recipe, log=quiet)


def test_loss_token_count_and_partial_truncation_is_named():
    kept = {"labels": [-100, -100, 5, 6]}
    lost = {"labels": [7, -100, -100, -100]}  # labels[0] predicts nothing
    assert loss_token_count(kept) == 2 and loss_token_count(lost) == 0
    lines: list[str] = []
    recipe = load_recipe(None, max_length=8)
    check_loss_tokens([kept, lost, kept], [kept], recipe, lines.append)
    assert lines == [
        "smoa: 1 of 3 training examples keep no loss token after truncation to max_length=8; they add nothing to "
        "the loss (raise max_length to keep them)"
    ]
    with pytest.raises(RecipeError, match="no validation example"):
        check_loss_tokens([kept], [lost], recipe, lines.append)


def test_output_dir_that_cannot_hold_a_run_is_named(tiny_model_dir, train_file, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    args = ["train", "--model", str(tiny_model_dir), "--set", f"train_file={train_file}"]
    code = main([*args, "--output-dir", str(blocker)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "output_dir" in err and "is a file, not a folder" in err
    code = main([*args, "--output-dir", str(blocker / "below")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot create the run folder" in err


def test_cli_prints_a_preflight_error_in_one_line(tiny_model_dir, train_file, tmp_path, capsys):
    args = ["train", "--model", str(tiny_model_dir), "--set", f"train_file={train_file}", "--set", "val_size=8"]
    code = main([*args, "--set", "eval_tasks=[nope]", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "recipe key eval_tasks: unknown task 'nope'" in err
    assert err.count("memorize") == 1


def test_compare_checks_every_arm_before_the_first_trains(tiny_model_dir, train_file, tmp_path, no_model):
    from smoa.training.compare import run_compare

    values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "cmp")
    values["method_args"] = {"r": 4, "num_blocks": 2}  # num_blocks is SMoA's; LoRA's config refuses it
    with pytest.raises(RecipeError, match=r"method_args=.* is invalid for method 'lora'.*num_blocks"):
        run_compare(load_recipe(None, **values), ["smoa", "lora"], [1], log=quiet)


def test_study_checks_every_arm_and_ablation_before_the_first_task(tiny_model_dir, train_file, tmp_path, no_model):
    from smoa.study import parse_study, run_study

    recipe = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "unused")
    recipe = {k: v for k, v in recipe.items() if k not in ("output_dir", "method", "method_args", "learning_rate")}
    study = parse_study(
        {
            "name": "bad",
            "output_dir": str(tmp_path / "runs"),
            "results_dir": str(tmp_path / "results"),
            "recipe": recipe,
            "arms": {
                "smoa": {"method": "smoa", "learning_rates": [1e-3, 1e-2], "method_args": {"r": 4, "num_blocks": 2}},
                "lora": {"method": "lora", "learning_rates": [1e-3, 1e-2], "method_args": {"r": 2}},
            },
            "ablations": {"smoa-odd": {"of": "smoa", "method_args": {"permutation": "sideways"}}},
            "seeds": [1],
            "extend_grid": 0,
            "evaluation": {"tasks": ["boolq"], "limit": 2},
        }
    )
    with pytest.raises(RecipeError, match=r"invalid for method 'smoa'.*sideways"):
        run_study(study, log=quiet)
    assert not (tmp_path / "results" / "runs").exists() or not list((tmp_path / "results" / "runs").iterdir())


@pytest.mark.parametrize("task", ["commonsense", "math"])
def test_own_data_under_a_paper_task_points_to_task_custom(task, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(20)]))
    code = main(["train", "--task", task, "--model", str(tiny_model_dir), "--set", f"train_file={data}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing field" in err
    assert (
        f"holds no {task} training records but instruction records (your own data's format); if it is your own "
        "data, set task: custom" in err
    )
