"""Study files, the learning-rate choice, task order, the paired bootstrap and the summary, without training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from smoa.study import paired_bootstrap, parse_study, summarize
from smoa.study.protocol import GRID_STEP, choose_rate
from smoa.study.runner import Task, load_results, next_task, task_recipe, tasks_in_order
from smoa.study.summary import accuracy_half_width
from smoa.training.recipe import RecipeError


def study_data(tmp_path, **extra):
    data = {
        "name": "s",
        "output_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"),
        "recipe": {"max_steps": 4, "batch_size": 2, "micro_batch_size": 2},
        "arms": {
            "smoa": {"method": "smoa", "learning_rates": [1e-3, 1e-2]},
            "lora": {"method": "lora", "learning_rates": [1e-4, 1e-3]},
            "hira": {"method": "hira", "learning_rates": [1e-3, 1e-2]},
        },
        "ablations": {"smoa-identity": {"of": "smoa", "method_args": {"permutation": "identity"}}},
        "seeds": [1, 2],
        "evaluation": {"generate": {"arms": ["smoa"], "seeds": [1]}},
    }
    data.update(extra)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown key 'colour'"),
        ({"arms": {"smoa": {"method": "smoa", "learning_rates": [1e-3]}}}, "at least two rates"),
        ({"arms": {"smoa": {"learning_rates": [1e-3, -1]}, "lora": {"learning_rates": [1, 2]}}}, "positive number"),
        ({"primary": ["smoa", "smoa"]}, "two different arms"),
        ({"seeds": []}, "non-empty list"),
        ({"ablations": {"x": {"of": "nope"}}}, "must name an arm"),
        ({"recipe": {"max_stepz": 3}}, "unknown recipe key 'max_stepz'"),
        ({"evaluation": {"method": "guess"}}, "choose loglik, cloze or generate"),
    ],
)
def test_bad_study_files_are_refused_with_the_key(tmp_path, change, message):
    with pytest.raises(RecipeError, match=message):  # StudyError is a RecipeError
        parse_study(study_data(tmp_path, **change))


def test_rate_choice_extends_an_edge_winner_then_settles():
    assert choose_rate({1e-3: 0.5, 1e-2: 0.4}, 0, 2) == ("extend", pytest.approx(1e-2 * GRID_STEP))
    assert choose_rate({1e-3: 0.3, 1e-2: 0.4}, 0, 2) == ("extend", pytest.approx(1e-3 / GRID_STEP))
    assert choose_rate({1e-3: 0.5, 3e-3: 0.3, 1e-2: 0.4}, 0, 2) == ("chosen", 3e-3)
    assert choose_rate({1e-3: 0.5, 1e-2: 0.4}, 2, 2) == ("chosen", 1e-2)  # extensions used up
    assert choose_rate({1e-3: 0.4, 1e-2: 0.4, 1e-1: 0.5}, 0, 0) == ("chosen", 1e-3)  # tie: the smaller rate
    assert choose_rate({1e-3: 0.5, 1e-2: math.nan}, 0, 2) == ("extend", pytest.approx(1e-3 / GRID_STEP))


def fake_result(study, task: Task, best_val_loss=None, correct=None, extension=False):
    record = {
        "id": task.id,
        "kind": task.kind,
        "variant": task.variant,
        "seed": task.seed,
        "learning_rate": task.learning_rate,
        "best_val_loss": best_val_loss,
        "extension": extension,
        "val_loss_curve": [[2, 1.0], [4, best_val_loss or 1.0]],
        "method": "x",
        "trainable_params": 10,
        "params_percent": 1.0,
        "update_rank": 3.0,
        "steps": 4,
        "tokens_seen": 100,
        "train_seconds": 1.0,
        "peak_memory_mib": 1.0,
        "adapter_dir": "a",
    }
    if task.kind in ("sweep", "final"):
        record["recipe_fingerprint"] = task_recipe(study, task).fingerprint()
    if correct is not None:
        record["examples"] = {
            name: {"uids": [f"{name}-{i}" for i in range(len(c))], "correct": c} for name, c in correct.items()
        }
    path = study.runs_dir + f"/{task.id}.json"
    import os

    os.makedirs(study.runs_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f)


def test_task_order_sweeps_first_then_finals_at_the_chosen_rate(tmp_path):
    study = parse_study(study_data(tmp_path))
    first = [t.id for t in tasks_in_order(study, {})]
    assert first[:5] == ["sweep-smoa-lr0.001", "sweep-smoa-lr0.01", "sweep-lora-lr0.0001", "sweep-lora-lr0.001", "base"]
    assert not any(t.startswith("final") for t in first)
    losses = {("smoa", 1e-3): 0.9, ("smoa", 1e-2): 0.5, ("lora", 1e-4): 0.7, ("lora", 1e-3): 0.6}
    for (arm, rate), loss in losses.items():
        fake_result(study, Task("sweep", arm, rate, 0), loss)
    # both winners sit at an edge: one extension each, beyond the winning end
    pending = [t for t in tasks_in_order(study, load_results(study))]
    assert pending[0].id == "sweep-smoa-lr0.0316" and pending[1].id == "sweep-lora-lr0.00316"
    fake_result(study, Task("sweep", "smoa", 1e-2 * GRID_STEP, 0), 0.8, extension=True)
    fake_result(study, Task("sweep", "lora", 1e-3 * GRID_STEP, 0), 0.65, extension=True)
    order = [t for t in tasks_in_order(study, load_results(study)) if t.id not in load_results(study)]
    finals = [t for t in order if t.kind == "final"]
    assert [t.id for t in finals[:2]] == ["final-smoa-seed1", "final-smoa-seed2"]
    assert {t.variant: t.learning_rate for t in finals}["smoa"] == 1e-2
    assert {t.variant: t.learning_rate for t in finals}["smoa-identity"] == 1e-2  # the ablation at SMoA's rate
    assert {t.variant: t.learning_rate for t in finals}["lora"] == 1e-3
    assert order[0].id == "base" and not any(t.variant == "hira" and t.kind == "final" for t in order)


def test_a_diverged_sweep_run_ranks_last_and_is_shown(tmp_path):
    study = parse_study(study_data(tmp_path, extend_grid=0))
    fake_result(study, Task("sweep", "smoa", 1e-3, 0), 0.9)
    fake_result(study, Task("sweep", "smoa", 1e-2, 0), None)
    results = load_results(study)
    results["sweep-smoa-lr0.01"]["diverged"] = "training diverged at step 3"
    (tmp_path / "results" / "runs" / "sweep-smoa-lr0.01.json").write_text(json.dumps(results["sweep-smoa-lr0.01"]))
    summary = summarize(study)
    assert summary["sweeps"]["smoa"]["chosen"] == 1e-3 and summary["sweeps"]["smoa"]["diverged"] == [1e-2]
    from smoa.study.summary import summary_markdown

    assert "0.01: diverged" in summary_markdown(summary)


def test_a_finished_run_that_no_longer_matches_the_study_is_refused(tmp_path):
    study = parse_study(study_data(tmp_path))
    task = Task("sweep", "smoa", 1e-3, 0)
    fake_result(study, task, 0.5)
    results = load_results(study)
    results[task.id]["recipe_fingerprint"] = "other"
    with pytest.raises(ValueError, match="trained with other settings"):
        next_task(study, results)


def test_paired_bootstrap_difference_and_interval():
    rng = np.random.default_rng(0)
    sets = ["boolq", "piqa"]

    def results(p, seeds=(1, 2, 3)):
        return [
            {
                "id": f"r{s}",
                "seed": s,
                "examples": {
                    d: {"uids": list(range(200)), "correct": (rng.random(200) < p).astype(int).tolist()} for d in sets
                },
            }
            for s in seeds
        ]

    better, worse = results(0.8), results(0.5)
    stats = paired_bootstrap(better, worse, sets, replicates=2000)
    observed = (
        np.mean(
            [
                np.mean(np.subtract(a["examples"][d]["correct"], b["examples"][d]["correct"]))
                for a, b in zip(better, worse, strict=True)
                for d in sets
            ]
        )
        * 100
    )
    assert stats["difference"] == pytest.approx(observed)
    assert stats["low"] < stats["difference"] < stats["high"] and stats["low"] > 15 and stats["high"] < 45
    assert stats["p_below_zero"] == 0.0
    same = paired_bootstrap(better, better, sets, replicates=500)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    swapped = paired_bootstrap(worse, better, sets, replicates=2000)
    assert swapped["difference"] == pytest.approx(-stats["difference"])
    worse[0]["examples"]["boolq"]["uids"] = list(range(1, 201))
    with pytest.raises(ValueError, match="other examples"):
        paired_bootstrap(better, worse, sets)


def test_half_width_of_the_average_over_sets():
    assert accuracy_half_width([[1, 0] * 50]) == pytest.approx(100 * 1.96 * math.sqrt(0.25 / 100))
    assert accuracy_half_width([[1] * 10, [0] * 10]) == 0.0
    two = accuracy_half_width([[1, 0] * 50, [1, 0] * 50])
    assert two == pytest.approx(100 * 1.96 * math.sqrt(2 * 0.25 / 100) / 2)


def test_summary_recomputes_accuracies_from_the_examples(tmp_path):
    study = parse_study(study_data(tmp_path))
    for (arm, rate), loss in {
        ("smoa", 1e-3): 0.5,
        ("smoa", 1e-2): 0.6,
        ("lora", 1e-4): 0.7,
        ("lora", 1e-3): 0.6,
    }.items():
        fake_result(study, Task("sweep", arm, rate, 0), loss)
    fake_result(study, Task("sweep", "smoa", 1e-3 / GRID_STEP, 0), 0.55, extension=True)
    fake_result(study, Task("sweep", "lora", 1e-4 / GRID_STEP, 0), 0.9, extension=True)
    fake_result(study, Task("sweep", "lora", 1e-3 * GRID_STEP, 0), 0.8, extension=True)
    fake_result(study, Task("final", "smoa", 1e-3, 1), 0.5, {"boolq": [1, 1, 0, 0], "piqa": [1, 1, 1, 1]})
    fake_result(study, Task("final", "smoa", 1e-3, 2), 0.5, {"boolq": [1, 0, 0, 0], "piqa": [1, 1, 1, 0]})
    fake_result(study, Task("final", "lora", 1e-3, 1), 0.6, {"boolq": [0, 0, 0, 0], "piqa": [1, 1, 0, 0]})
    fake_result(study, Task("final", "lora", 1e-3, 2), 0.6, {"boolq": [1, 0, 0, 0], "piqa": [1, 0, 0, 0]})
    summary = summarize(study)
    assert summary["sweeps"]["smoa"]["chosen"] == 1e-3 and summary["sweeps"]["lora"]["chosen"] == 1e-3
    smoa_row = summary["finals"]["smoa"]
    assert smoa_row["per_set"]["boolq"] == (pytest.approx(37.5), pytest.approx(math.sqrt(2 * 12.5**2)))
    assert smoa_row["average_per_seed"] == [75.0, 50.0]
    [headline] = [c for c in summary["comparisons"] if (c["a"], c["b"]) == ("smoa", "lora")]
    assert headline["difference"] == pytest.approx(((75.0 - 25.0) + (50.0 - 25.0)) / 2)


def test_generation_table_counts_parsed_and_modal_answers_and_pairs_the_arms(tmp_path):
    from smoa.study.summary import answer_shares, summary_markdown

    study = parse_study(study_data(tmp_path, evaluation={"generate": {"arms": ["smoa", "lora"], "seeds": [1]}}))
    answers = {
        "smoa": ["the correct answer is true", "the correct answer is true", "no idea", "false"],
        "lora": ["the correct answer is false"] * 4,
    }
    for arm, texts in answers.items():
        correct = [1, 0, 0, 0] if arm == "smoa" else [0] * 4
        fake_result(study, Task("generate", arm, 1e-3, 1), correct={"boolq": correct})
        path = tmp_path / "results" / "runs" / f"generate-{arm}-seed1.json"
        record = json.loads(path.read_text())
        record["examples"]["boolq"]["predictions"] = texts
        path.write_text(json.dumps(record))
    results = load_results(study)
    smoa = answer_shares([results["generate-smoa-seed1"]], ["boolq"])
    assert smoa == {"parsed": 75.0, "modal": 50.0}  # "no idea" has no label; "true" is 2 of the 4 answers
    assert answer_shares([results["generate-lora-seed1"]], ["boolq"]) == {"parsed": 100.0, "modal": 100.0}
    summary = summarize(study)
    assert list(summary["generation"]) == ["smoa", "lora"]  # the study's arm order
    assert summary["generation"]["smoa"]["examples"] == 4
    [pair] = summary["generation_comparisons"]
    assert (pair["a"], pair["b"]) == ("smoa", "lora") and pair["difference"] == pytest.approx(25.0)
    text = summary_markdown(summary)
    assert "| smoa | 1 | 25.0 | **25.00** |" in text and "75.0 % | 50.0 %" in text
    assert "Generation, smoa − lora: +25.00 points" in text


def test_reference_losses_are_the_label_prior_and_uniform_guess_per_loss_token():
    from smoa.study.floor import ratio_with_error, reference_losses
    from smoa.tasks.records import Record

    def record(dataset, answer, labels):
        return Record(instruction=f"q\n\nAnswer format: {'/'.join(labels)}", output="", answer=answer, dataset=dataset)

    train = [record("boolq", "true", ["true", "false"])] * 3 + [record("piqa", "solution1", ["solution1", "solution2"])]
    validation = [record("boolq", "true", ["true", "false"]), record("piqa", "solution2", ["solution1", "solution2"])]
    items = [{"labels": [-100, -100, 5, 6, 7]}, {"labels": [-100, 5, 6, 7, 8]}]
    references = reference_losses(train, validation, items)
    # boolq: true seen 3 of 3 -> (3+1)/(3+1+0+1); piqa: solution2 never seen -> (0+1)/(1+1+0+1)
    expected = (-math.log(4 / 5) - math.log(1 / 3)) / 7
    assert references["label_prior"] == pytest.approx(expected)
    assert references["uniform"] == pytest.approx(2 * math.log(2) / 7)
    assert (references["examples"], references["loss_tokens"]) == (2, 7)
    # delta-method standard error of a ratio of sums, against the formula written out
    losses, tokens = [-math.log(4 / 5), -math.log(1 / 3)], [3, 4]
    ratio = sum(losses) / 7
    se = math.sqrt(sum((loss - ratio * n) ** 2 for loss, n in zip(losses, tokens, strict=True)) / 2) / 3.5
    assert references["label_prior_se"] == pytest.approx(se)
    assert ratio_with_error([1.0, 1.0], [2, 2]) == (0.5, 0.0)
    assert references["per_example"] == {"uids": ["", ""], "label_prior": losses, "uniform": [math.log(2)] * 2,
                                         "tokens": tokens}  # fmt: skip


def test_a_runs_paired_distance_to_a_reference_is_over_the_same_examples():
    from smoa.study.floor import paired_difference, ratio_with_error

    reference = {"uids": ["a", "b", "c"], "label_prior": [1.0, 2.0, 0.5], "uniform": [0.7] * 3, "tokens": [2, 3, 1]}
    run = {"uids": ["a", "b", "c"], "loss": [1.5, 1.0, 0.5], "tokens": [2, 3, 1]}
    assert paired_difference(run, reference, "label_prior") == ratio_with_error([0.5, -1.0, 0.0], [2, 3, 1])
    assert paired_difference(run, reference, "label_prior")[0] == pytest.approx(-0.5 / 6)
    with pytest.raises(ValueError, match="not those of the reference"):
        paired_difference({**run, "uids": ["a", "c", "b"]}, reference, "uniform")


def test_summary_shows_the_distance_to_the_label_prior_floor(tmp_path):
    from smoa.study.summary import summary_markdown

    study = parse_study(study_data(tmp_path))
    fake_result(study, Task("final", "smoa", 1e-3, 1), 0.5, {"boolq": [1, 0]})
    fake_result(study, Task("final", "smoa", 1e-3, 2), 0.7, {"boolq": [1, 1]})
    assert "Val − prior" not in summary_markdown(summarize(study))  # no reference file: no column
    floors = {"seeds": {"0": {"floor": 0.3}, "1": {"floor": 0.4}, "2": {"floor": 0.5}}}  # older code's file
    (tmp_path / "results" / "label_prior.json").write_text(json.dumps(floors))
    summary = summarize(study)
    assert summary["finals"]["smoa"]["above_floor"] == pytest.approx(((0.5 - 0.4) + (0.7 - 0.5)) / 2)
    text = summary_markdown(summary)
    assert "| +0.1500 |" in text and "| Val − prior |" in text and "| Val − uniform |" not in text
    new = {str(s): {"label_prior": v, "label_prior_se": 0.01, "uniform": v - 0.1, "uniform_se": 0.01}
           for s, v in ((0, 0.3), (1, 0.4), (2, 0.5))}  # fmt: skip
    (tmp_path / "results" / "label_prior.json").write_text(json.dumps({"seeds": new}))
    summary = summarize(study)
    assert summary["finals"]["smoa"]["above_uniform"] == pytest.approx(0.25)
    assert "| Val − uniform |" in summary_markdown(summary)
    (tmp_path / "results" / "label_prior.json").write_text("{}")
    with pytest.raises(ValueError, match="not a label-prior file"):
        summarize(study)


def test_an_arm_with_one_fixed_rate_is_not_swept(tmp_path):
    from smoa.study.summary import summary_markdown

    arms = {
        "smoa": {"method": "smoa", "learning_rate": 3e-2},
        "lora": {"method": "lora", "learning_rate": 3e-4},
    }
    study = parse_study(study_data(tmp_path, arms=arms, ablations={}))
    order = [t.id for t in tasks_in_order(study, {})]
    assert order[:3] == ["base", "final-smoa-seed1", "final-smoa-seed2"] and not any("sweep" in t for t in order)
    assert "- smoa: **0.03**" in summary_markdown(summarize(study))
    both = {"smoa": {"learning_rate": 3e-2, "learning_rates": [1e-3, 1e-2]}, "lora": arms["lora"]}
    with pytest.raises(RecipeError, match="not both"):
        parse_study(study_data(tmp_path, arms=both))


def test_loss_rise_is_the_largest_climb_above_the_lowest_earlier_loss():
    from smoa.study.summary import loss_rise

    assert loss_rise([[1, 0.5], [2, 0.4], [3, 0.3]]) == 0.0
    assert loss_rise([[1, 0.5], [2, 0.2], [3, 0.6], [4, 0.1], [5, 0.3]]) == pytest.approx(0.4)
    assert loss_rise([]) == 0.0


def test_answer_shares_leave_out_free_form_sets_and_missing_predictions():
    from smoa.study.summary import answer_shares

    run = {
        "examples": {
            "gsm8k": {"predictions": ["The answer is: 4"], "correct": [1]},
            "piqa": {"correct": [1]},  # no predictions saved
        }
    }
    assert answer_shares([run], ["gsm8k", "piqa"]) == {"parsed": None, "modal": None}
    run["examples"]["boolq"] = {"predictions": ["true", "false"], "correct": [1, 0]}
    assert answer_shares([run], ["gsm8k", "piqa", "boolq"]) == {"parsed": 100.0, "modal": 50.0}
