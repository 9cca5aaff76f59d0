"""A whole study on a tiny model: sweeps, base, finals and the generation check, written once, resumed, summarised."""

from __future__ import annotations

import json

import pytest

from smoa.study import parse_study, run_study, write_summary
from smoa.study.runner import load_results
from tests.training.conftest import tiny_recipe_values


def test_tiny_study_runs_resumes_and_summarises(tiny_model_dir, train_file, tmp_path):
    recipe = tiny_recipe_values(
        tiny_model_dir, train_file, tmp_path / "unused", max_steps=2, eval_steps=1, save_steps=1
    )
    recipe = {
        k: v for k, v in recipe.items() if k not in ("output_dir", "method", "method_args", "learning_rate", "seed")
    }
    study = parse_study(
        {
            "name": "tiny",
            "output_dir": str(tmp_path / "runs"),
            "results_dir": str(tmp_path / "results"),
            "recipe": recipe,
            "arms": {
                "smoa": {
                    "method": "smoa",
                    "learning_rates": [1e-3, 1e-2],
                    "method_args": {"r": 4, "num_blocks": 2, "lora_alpha": 8, "lora_dropout": 0.0},
                },
                "lora": {"method": "lora", "learning_rates": [1e-4, 1e-3], "method_args": {"r": 2, "lora_alpha": 4}},
            },
            "ablations": {"smoa-identity": {"of": "smoa", "method_args": {"permutation": "identity"}}},
            "seeds": [1, 2],
            "extend_grid": 0,
            "evaluation": {
                "tasks": ["boolq", "piqa"],
                "limit": 3,
                "generate": {"arms": ["smoa"], "limit": 1, "seeds": [1]},
            },
            "bootstrap": 200,
        }
    )
    ran = run_study(study, log=lambda *a: None)
    results = load_results(study)
    assert ran == len(results) == 4 + 1 + 6 + 1  # sweeps, base, finals (2 arms + ablation, 2 seeds), generation
    final = results["final-smoa-seed1"]
    assert final["learning_rate"] in (1e-3, 1e-2) and final["steps"] == 2 and final["tokens_seen"] > 0
    assert [step for step, _ in final["val_loss_curve"]] == [1, 2]
    assert final["examples"]["boolq"]["uids"] == results["final-lora-seed2"]["examples"]["boolq"]["uids"]
    assert len(final["examples"]["piqa"]["correct"]) == 3
    assert "examples" not in results["sweep-smoa-lr0.001"]  # the sweep never sees a test example
    assert results["final-smoa-identity-seed1"]["method_args"]["permutation"] == "identity"
    assert results["generate-smoa-seed1"]["examples"]["boolq"]["predictions"][0] is not None
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "results" / "runs").iterdir()}
    assert run_study(study, log=lambda *a: None) == 0  # resumed: nothing is run again
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "results" / "runs").iterdir()}
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- study:tiny:begin (x) -->\nold\n<!-- study:tiny:end -->\noutro\n")
    summary = write_summary(study, doc)
    assert {c["a"] + "-" + c["b"] for c in summary["comparisons"]} >= {"smoa-lora"}
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and "smoa − lora" in text
    assert (tmp_path / "results" / "figures" / "accuracy.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert saved["finals"]["smoa"]["seeds"] == [1, 2]

    from smoa.study.floor import write_label_prior

    floors = write_label_prior(study)["seeds"]
    assert set(floors) == {"0", "1", "2"}
    assert all(0 < f["uniform"] < 2 and 0 < f["label_prior"] < 2 and f["examples"] == 8 for f in floors.values())
    summary = write_summary(study, doc)
    assert summary["finals"]["smoa"]["above_floor"] is not None and "Val − uniform" in doc.read_text()
    # every final run stored its per-example validation losses, paired with the references on the same examples
    examples = final["validation_examples"]
    assert examples["uids"] == floors["1"]["per_example"]["uids"] and len(examples["loss"]) == 8
    paired, se = summary["finals"]["smoa"]["above_floor_paired"]
    assert se > 0 and "(paired " in doc.read_text()
    assert abs(paired - summary["finals"]["smoa"]["above_floor"]) < 0.05  # token-weighted vs the trainer's loss


def test_stored_validation_losses_are_each_examples_summed_token_loss(tiny_model_dir, train_file, tmp_path):
    import dataclasses

    import torch

    from smoa.methods import load_adapter
    from smoa.models import load_model_and_tokenizer
    from smoa.study.runner import validation_examples
    from smoa.training import load_recipe, run_training
    from smoa.training.data import load_training_records, tokenize_records

    recipe = load_recipe(None, **tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "run", max_steps=1))
    adapter = run_training(recipe, log=lambda *a, **k: None).adapter_dir
    stored = validation_examples(recipe, adapter)
    model, tokenizer = load_model_and_tokenizer(recipe.model)
    model = load_adapter(model, adapter).eval()
    _, validation = load_training_records(dataclasses.replace(recipe))
    for item, loss, tokens in zip(tokenize_records(validation, tokenizer, recipe), stored["loss"], stored["tokens"],
                                  strict=True):  # fmt: skip
        with torch.no_grad():  # the model's own mean loss over the example's label tokens
            mean = model(input_ids=torch.tensor([item["input_ids"]]), labels=torch.tensor([item["labels"]])).loss
        assert tokens == sum(1 for label in item["labels"][1:] if label != -100)
        assert loss / tokens == pytest.approx(float(mean), rel=1e-5)


def test_the_gpu_study_file_runs_its_first_tasks_on_a_tiny_model(tiny_model_dir, train_file, tmp_path):
    import yaml

    data = yaml.safe_load(open("recipes/study-gpu.yaml"))
    assert data["recipe"]["precision"] == "bf16" and data["evaluation"]["limit"] is None
    data["recipe"].update(
        model=str(tiny_model_dir),
        train_file=str(train_file),
        precision="fp32",
        epochs=1,
        val_size=4,
        eval_steps=2,
        save_steps=2,
        warmup_steps=0,
        batch_size=4,
        micro_batch_size=4,
        budget="paper",  # the tiny model cannot hold the matched budget of SMoA r=32
    )
    data.update(output_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))
    for arm in data["arms"].values():  # the tiny model's layers are 32 wide
        arm["method_args"] = {
            **arm.get("method_args", {}),
            "r": 4,
            **({"num_blocks": 2} if arm["method"] == "smoa" else {}),
        }
    study = parse_study(data)
    assert run_study(study, log=lambda *a: None, max_tasks=2) == 2
    first = load_results(study)["sweep-smoa-lr0.001"]
    assert first["steps"] == 11 and first["recipe"]["epochs"] == 1.0  # one epoch of the 44 training examples


def test_the_long_follow_up_uses_the_rates_the_main_study_chose():
    from smoa.study import load_study

    chosen = {arm: s["chosen"] for arm, s in json.load(open("docs/study/cpu/summary.json"))["sweeps"].items()}
    follow_up = load_study("recipes/study-cpu-long.yaml")
    assert all(arm.fixed for arm in follow_up.arms.values())
    assert {name: arm.learning_rates[0] for name, arm in follow_up.arms.items()} == {
        name: chosen[name] for name in follow_up.arms
    }


def test_study_command_plans_writes_the_floor_and_refuses_a_bad_file(tiny_model_dir, train_file, tmp_path, capsys):
    import yaml

    from smoa.cli.main import main

    recipe = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "unused", max_steps=2)
    recipe = {
        k: v for k, v in recipe.items() if k not in ("output_dir", "method", "method_args", "learning_rate", "seed")
    }
    data = {
        "name": "cli",
        "output_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"),
        "recipe": recipe,
        "arms": {"smoa": {"method": "smoa", "learning_rate": 1e-2}, "lora": {"method": "lora", "learning_rate": 1e-3}},
        "seeds": [1],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["study", "--recipe", str(path), "--plan"]) == 0
    assert "ready now: base, final-smoa-seed1, final-lora-seed1" in capsys.readouterr().out
    assert main(["study", "--recipe", str(path), "--floor", "--doc", str(tmp_path / "none.md")]) == 0
    assert "seed 1: uniform guess" in capsys.readouterr().out
    # fixed rates only: no sweep seed
    assert set(json.loads((tmp_path / "results" / "label_prior.json").read_text())["seeds"]) == {"1"}
    path.write_text(yaml.safe_dump({**data, "seedz": [1]}))
    assert main(["study", "--recipe", str(path), "--plan"]) == 2
    assert "unknown key 'seedz'" in capsys.readouterr().err


def test_a_finished_run_folder_is_reused_only_for_the_recipe_it_trained(tiny_model_dir, train_file, tmp_path):
    """Killed after a run finished but before its task JSON was written, then the study file changed: the rerun
    must not stamp the old run with the new recipe."""
    from smoa.training.run_folder import RunDirError

    def study(steps):
        recipe = tiny_recipe_values(tiny_model_dir, train_file, tmp_path / "unused", max_steps=steps)
        recipe = {k: v for k, v in recipe.items() if k not in ("output_dir", "method", "method_args", "learning_rate")}
        return parse_study(
            {
                "name": "reuse",
                "output_dir": str(tmp_path / "runs"),
                "results_dir": str(tmp_path / "results"),
                "recipe": recipe,
                "arms": {
                    "lora": {"method": "lora", "learning_rates": [1e-3, 1e-2], "method_args": {"r": 2}},
                    "hira": {"method": "hira", "learning_rates": [1e-3, 1e-2], "method_args": {"r": 2}},
                },
                "seeds": [1],
                "extend_grid": 0,
                "evaluation": {"tasks": ["boolq"], "limit": 2},
            }
        )

    first = study(2)
    assert run_study(first, log=lambda *a: None, max_tasks=1) == 1
    [written] = (tmp_path / "results" / "runs").iterdir()
    written.unlink()  # the kill: the run folder is finished, its task JSON is not written
    assert run_study(first, log=lambda *a: None, max_tasks=1) == 1  # same study: reused
    written.unlink()
    with pytest.raises(RunDirError, match=r"finished run with other settings \(max_steps 2 → 4\)"):
        run_study(study(4), log=lambda *a: None, max_tasks=1)
