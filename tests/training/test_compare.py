"""The comparison table: per-method rates, means over seeds, the average over sets and its 95 % half-width."""

from __future__ import annotations

import math

import pytest

from smoa.training.compare import compare_table, half_width_95
from smoa.training.recipe import load_recipe
from smoa.training.trainer import TrainResult

SETS = [("commonsense", "boolq"), ("commonsense", "piqa")]


def result(method: str, accuracies: dict[str, float], learning_rate: float = 1e-3) -> TrainResult:
    datasets = {name: {"display": name.upper(), "accuracy": acc, "total": 100} for name, acc in accuracies.items()}
    return TrainResult(
        run_dir="r", adapter_dir="a", method=method, settings={}, trainable_params=1000, params_percent=1.5,
        train_examples=10, steps=5, train_seconds=12.0, peak_memory_mib=100.0, best_checkpoint=None,
        final_train_loss=0.1, best_val_loss=0.2, update_rank=7.0, learning_rate=learning_rate,
        evaluation={"commonsense": {"datasets": datasets}},
    )  # fmt: skip


def test_half_width_of_the_mean_over_sets():
    run = result("smoa", {"boolq": 50.0, "piqa": 80.0})
    want = 100 * 1.96 * math.sqrt(0.25 / 100 + 0.16 / 100) / 2
    assert half_width_95(run, SETS) == pytest.approx(want)


def test_table_rows_average_seeds_and_print_rate_and_interval():
    runs = [
        result("smoa", {"boolq": 50.0, "piqa": 80.0}, 1e-2),
        result("smoa", {"boolq": 60.0, "piqa": 70.0}, 1e-2),
        result("lora", {"boolq": 40.0, "piqa": 60.0}),
    ]
    lines = compare_table(runs).splitlines()
    assert lines[0].split(" | ")[:7] == ["| Method", "lr", "Seeds", "BOOLQ", "PIQA", "Avg", "±95%"]
    smoa_row = lines[2].split(" | ")
    assert smoa_row[:6] == ["| smoa", "0.01", "2", "55.00", "75.00", "65.00"]
    widths = [half_width_95(r, SETS) for r in runs[:2]]
    assert smoa_row[6] == f"± {sum(widths) / 2:.1f}"
    assert lines[3].split(" | ")[:6] == ["| lora", "0.001", "1", "40.00", "60.00", "50.00"]


def test_each_method_takes_its_own_rate():
    recipe = load_recipe(None, learning_rate=1e-3, method_learning_rates={"lora": 3e-4})
    assert recipe.for_method("lora").learning_rate == 3e-4 and recipe.for_method("lora").method == "lora"
    assert recipe.for_method("smoa").learning_rate == 1e-3
    with pytest.raises(ValueError, match=r"method_learning_rates.lora=-1 is invalid"):
        load_recipe(None, method_learning_rates={"lora": -1})


def test_compare_prints_one_line_per_finished_evaluation(monkeypatch, tmp_path):
    """Lines come as the runner finishes each set (logged), then for sets it did not log; recipe.progress: false
    turns the bars off during the runs; the logger is left as it was."""
    import logging

    from smoa._progress import progress_enabled
    from smoa.evaluation.runner import evaluation_line
    from smoa.evaluation.runner import logger as evaluation_logger
    from smoa.training import compare

    printed: list[str] = []
    bars: list[bool] = []

    def fake_training(run, *, resume, overwrite, log):
        bars.append(progress_enabled())
        done = result(run.method, {"boolq": 50.0, "piqa": 75.0})
        boolq = done.evaluation["commonsense"]["datasets"]["boolq"] | {"seconds": 1.5, "correct": 50}
        evaluation_logger.info(evaluation_line(boolq), extra={"task": "commonsense", "dataset": "boolq"})
        printed.append("trained")
        return done

    monkeypatch.setenv("SMOA_PROGRESS", "1")
    monkeypatch.setattr(compare, "run_training", fake_training)
    recipe = load_recipe(None, output_dir=str(tmp_path), progress=False)
    compare.run_compare(recipe, ["smoa", "lora"], [1], log=printed.append)
    assert printed == [
        "=== smoa-seed1 ===",
        "smoa-seed1 · BOOLQ: accuracy 50.00% (50/100), 1.5 s",
        "trained",
        "smoa-seed1 · PIQA: accuracy 75.00% (?/100)",
        "=== lora-seed1 ===",
        "lora-seed1 · BOOLQ: accuracy 50.00% (50/100), 1.5 s",
        "trained",
        "lora-seed1 · PIQA: accuracy 75.00% (?/100)",
    ]
    assert bars == [False, False]
    assert not evaluation_logger.handlers and evaluation_logger.level == logging.NOTSET
