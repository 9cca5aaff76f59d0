from __future__ import annotations

from pathlib import Path

import pytest

from smoa.training.recipe import Recipe, RecipeError, load_recipe, parse_override

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    if path.name.startswith("study-"):  # a study file: its shared training recipe is checked by load_study
        from smoa.study import load_study

        study = load_study(str(path))
        assert set(study.primary) <= set(study.arms) and study.recipe.task == "commonsense"
        return
    if path.name.startswith("evidence-"):  # a memorisation experiment
        from smoa.evidence.protocol import load_experiment

        experiment = load_experiment(str(path))
        assert set(experiment.primary["difference"]) <= {arm.name for arm in experiment.arms}
        return
    recipe = load_recipe(str(path))
    assert recipe.name and recipe.task in ("commonsense", "math", "dialogue", "custom")
    if recipe.task == "custom":  # a shipped example points at a shipped file, which must read without error
        from smoa.training.data import load_training_records

        train, validation = load_training_records(recipe)
        assert train and len(validation) == recipe.val_size


def test_unknown_key_names_the_nearest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("learning_rat: 0.001\n")
    with pytest.raises(RecipeError, match=r"unknown recipe key 'learning_rat'; did you mean 'learning_rate'"):
        load_recipe(str(path))
    with pytest.raises(RecipeError, match=r"override 'epoch=2'.*did you mean 'epochs'"):
        load_recipe(None, ["epoch=2"])


def test_overrides_are_yaml_values():
    recipe = load_recipe(
        None, ["learning_rate=2e-4", "target_modules=[q_proj, v_proj]", "method_args.r=16", "train_file=null"]
    )
    assert recipe.learning_rate == 2e-4 and recipe.target_modules == ["q_proj", "v_proj"]
    assert recipe.method_args == {"r": 16} and recipe.train_file is None
    assert parse_override("name=x") == ("name", "x")
    with pytest.raises(RecipeError, match="key=value"):
        parse_override("oops")


@pytest.mark.parametrize(
    "values,key",
    [
        ({"task": "vision"}, "task"),
        ({"batch_size": 10, "micro_batch_size": 4}, "batch_size"),
        ({"save_steps": 30, "eval_steps": 20}, "save_steps"),
        ({"precision": "fp8"}, "precision"),
        ({"budget": "huge"}, "budget"),
        ({"learning_rate": 0}, "learning_rate"),
    ],
)
def test_invalid_values_name_the_key(values, key):
    with pytest.raises(RecipeError, match=f"recipe key {key}="):
        Recipe(**values)


def test_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must hold a mapping"):
        load_recipe(str(bad))


def test_fingerprint_ignores_logging_but_not_training():
    base = Recipe()
    assert Recipe(logging_steps=3, progress=False).fingerprint() == base.fingerprint()
    assert Recipe(learning_rate=1e-4).fingerprint() != base.fingerprint()


def test_cli_reports_bad_input_in_one_line(capsys, tmp_path):
    from smoa.cli.main import main

    assert main(["train", "--method", "nosuch", "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "smoa" in err and "lora" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    assert main(["train", "--set", "learning_rat=1"]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
    assert main(["compare", "--methods", "smoa,nosuch"]) == 2


def test_fingerprint_ignores_keys_at_their_default_and_output_options():
    base = load_recipe(None, learning_rate=1e-3, max_steps=10)
    assert (
        base.fingerprint() == load_recipe(None, learning_rate=1e-3, max_steps=10, group_by_length=False).fingerprint()
    )
    assert base.fingerprint() == load_recipe(None, learning_rate=1e-3, max_steps=10, output_dir="x").fingerprint()
    assert base.fingerprint() != load_recipe(None, learning_rate=1e-3, max_steps=10, group_by_length=True).fingerprint()
    assert base.fingerprint() != load_recipe(None, learning_rate=2e-3, max_steps=10).fingerprint()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_steps": -5}, r"max_steps=-5 is invalid: it must be >= 1 \(or -1\)"),
        ({"max_steps": 0}, r"max_steps=0 is invalid"),
        ({"epochs": -1}, r"epochs=-1 is invalid: it must be > 0"),
        ({"learning_rate": True}, r"learning_rate=True is invalid: it must be a finite number"),
        ({"learning_rate": float("nan")}, r"learning_rate=nan is invalid"),
        ({"max_steps": "ten"}, r"max_steps='ten' is invalid: it must be an integer"),
        ({"seed": "abc"}, r"seed='abc' is invalid: it must be an integer"),
        ({"warmup_steps": -3}, r"warmup_steps=-3 is invalid: it must be >= 0"),
        ({"dtype": "float8"}, r"dtype='float8' is invalid: it must be one of float32, bfloat16, float16"),
        ({"keep_last": "2"}, r"keep_last='2' is invalid: it must be an integer"),
        ({"group_by_length": "yes"}, r"group_by_length='yes' is invalid: it must be true or false"),
        ({"target_modules": [1, 2]}, r"target_modules=\[1, 2\] is invalid: it must be a list of strings"),
        ({"method_args": [1]}, r"method_args=\[1\] is invalid: it must be a mapping"),
    ],
)
def test_every_key_is_checked_for_type_and_range(values, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, **values)


def test_values_are_normalised_and_the_help_states_each_rule():
    recipe = load_recipe(None, learning_rate="1e-3", epochs=2, eval_tasks="boolq", max_steps=-1)
    assert recipe.learning_rate == 1e-3 and isinstance(recipe.epochs, float) and recipe.eval_tasks == ["boolq"]
    from smoa.training.recipe import recipe_help

    text = recipe_help()
    assert "max_steps" in text and ">= 1 (or -1)" in text and "one of float32, bfloat16, float16" in text


def test_method_args_the_method_does_not_take_are_named(tiny_model_dir, train_file, tmp_path):
    from smoa.training import run_training
    from tests.training.conftest import tiny_recipe_values

    for args, message in (({"r": 0, "num_blocks": 2}, "r=0 is invalid"), ({"r": 4, "colour": 1}, "'colour'")):
        values = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", method_args=args)
        with pytest.raises(RecipeError, match=rf"method_args=.* is invalid for method 'smoa': .*{message}"):
            run_training(load_recipe(None, **values), overwrite=True, log=lambda *a: None)


def test_evaluation_defaults_to_the_training_task():
    assert load_recipe(None, task="math").eval_tasks == ["gsm8k"]
    assert load_recipe(None, task="dialogue").eval_tasks == ["convai2"]
    assert load_recipe(None).eval_tasks == ["commonsense"]
    assert load_recipe(None, task="math", eval_tasks=[]).eval_tasks == []


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("name: x\nmethod: smoa\nmethod: lora\n", "lines 2 and 3"),
        ("name: x\nmethod_args:\n  r: 8\n  r: 16\n", "lines 3 and 4"),
    ],
)
def test_a_key_given_twice_is_refused_at_every_depth(tmp_path, text, line):
    from smoa.training.recipe import read_yaml_mapping

    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=f"given twice \\({line}\\); keep one"):
        read_yaml_mapping(str(path), "recipe file")


def test_an_override_whose_mapping_value_holds_a_key_twice_is_refused():
    from smoa.training.recipe import parse_override

    assert parse_override("method_args={r: 8, num_blocks: 2}") == ("method_args", {"r": 8, "num_blocks": 2})
    with pytest.raises(RecipeError, match=r"override 'method_args=\{r: 8, r: 16\}'.*'r' is given twice"):
        parse_override("method_args={r: 8, r: 16}")
