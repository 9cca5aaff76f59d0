"""The comparison table: per-method rates, means over seeds, the average over sets and its 95 % half-width."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from smoa.training.compare import compare_table, half_width_95
from smoa.training.recipe import load_recipe
from smoa.training.trainer import TrainResult
from tests.training.conftest import tiny_recipe_values

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


def run_with(method: str, summaries: dict[tuple[str, str], dict], **fields) -> TrainResult:
    """A synthetic run whose evaluation holds ``summaries`` keyed by ``(task, dataset)``; ``fields`` replace the
    other results of :func:`result`."""
    evaluation: dict = {}
    for (task, name), summary in summaries.items():
        evaluation.setdefault(task, {"datasets": {}})["datasets"][name] = {"display": name.upper(), **summary}
    return dataclasses.replace(result(method, {}), evaluation=evaluation, **fields)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def accuracy(value: float, total: int = 100) -> dict:
    return {"accuracy": value, "total": total}


def test_dataset_columns_follow_the_commonsense_order_then_first_seen():
    first = {
        ("commonsense", "obqa"): accuracy(1.0),
        ("commonsense", "boolq"): accuracy(2.0),
        ("own", "mine"): accuracy(3.0),
        ("commonsense", "arc_c"): accuracy(4.0),
        ("commonsense", "piqa"): accuracy(5.0),
    }
    runs = [
        run_with("smoa", first),
        run_with("lora", {("dialogue", "convai2"): {"avg": 6.0}, ("commonsense", "boolq"): accuracy(7.0)}),
    ]
    header = cells(compare_table(runs).splitlines()[0])
    assert header[3:9] == ["BOOLQ", "PIQA", "ARC_C", "OBQA", "MINE", "CONVAI2"]
    assert header[9:] == ["Avg", "±95%", "Trainable", "Params%", "ΔW rank", "Train s", "Peak MiB"]


def test_a_set_missing_from_the_first_run_of_its_task_gets_a_column():
    runs = [
        run_with("smoa", {("commonsense", "piqa"): accuracy(1.0)}),
        run_with("lora", {("commonsense", "boolq"): accuracy(2.0)}),
    ]
    assert cells(compare_table(runs).splitlines()[0])[3:5] == ["BOOLQ", "PIQA"]


def test_missing_results_and_other_metrics_are_na_cells():
    """A set a run did not evaluate is left out of that method's mean over seeds, and is n/a where no seed has it
    (so is the average then); the interval needs every set's accuracy and count; a metric without accuracy shows
    its average; a run without rate, rank or memory shows n/a."""
    both = {("commonsense", "boolq"): accuracy(40.0), ("commonsense", "piqa"): accuracy(80.0)}
    runs = [
        run_with("smoa", both),
        run_with("smoa", {("commonsense", "boolq"): accuracy(60.0)}),
        run_with(
            "lora",
            {("commonsense", "boolq"): accuracy(50.0)},
            learning_rate=None,
            update_rank=None,
            peak_memory_mib=None,
        ),
        run_with("mora", {("commonsense", "boolq"): accuracy(50.0, total=0), ("commonsense", "piqa"): {"avg": 7.5}}),
    ]
    lines = compare_table(runs).splitlines()
    assert cells(lines[0])[3:6] == ["BOOLQ", "PIQA", "Avg"]
    smoa_row, lora_row, mora_row = (cells(line) for line in lines[2:])
    assert smoa_row[:7] == ["smoa", "0.001", "2", "50.00", "80.00", "65.00", "n/a"]  # piqa from seed 1 alone
    assert lora_row[:7] == ["lora", "n/a", "1", "50.00", "n/a", "n/a", "n/a"]
    assert lora_row[9:] == ["n/a", "12", "n/a"]
    assert mora_row[3:7] == ["50.00", "7.50", "28.75", "n/a"]


def test_cost_columns_are_the_first_run_counts_and_seed_means():
    runs = [
        run_with(
            "smoa",
            {("commonsense", "boolq"): accuracy(50.0)},
            trainable_params=1_234_567,
            params_percent=0.123456,
            update_rank=6.0,
            train_seconds=10.0,
            peak_memory_mib=100.0,
            learning_rate=1e-3,
        ),
        run_with(
            "smoa",
            {("commonsense", "boolq"): accuracy(70.0, total=400)},
            trainable_params=1_234_567,
            params_percent=0.123456,
            update_rank=9.0,
            train_seconds=21.0,
            peak_memory_mib=301.0,
            learning_rate=3e-4,
        ),
    ]
    lines = compare_table(runs).splitlines()
    header, row = cells(lines[0]), cells(lines[2])
    assert "Avg" not in header  # one evaluated set: its column is the average
    assert header == [
        "Method",
        "lr",
        "Seeds",
        "BOOLQ",
        "±95%",
        "Trainable",
        "Params%",
        "ΔW rank",
        "Train s",
        "Peak MiB",
    ]
    widths = [half_width_95(r, [("commonsense", "boolq")]) for r in runs]
    assert widths[0] == pytest.approx(100 * 1.96 * math.sqrt(0.25 / 100)) and widths[1] < widths[0]
    assert row == [
        "smoa",
        "0.0003/0.001",
        "2",
        "60.00",
        f"± {sum(widths) / 2:.1f}",
        "1,234,567",
        "0.1235",
        "7.5",
        "16",
        "200",
    ]
    assert len(lines) == 3 and lines[1] == "|" + "---|" * len(header)


def test_a_table_without_evaluations_keeps_its_cost_columns():
    lines = compare_table([result("smoa", {})]).splitlines()
    assert cells(lines[0]) == [
        "Method",
        "lr",
        "Seeds",
        "±95%",
        "Trainable",
        "Params%",
        "ΔW rank",
        "Train s",
        "Peak MiB",
    ]
    assert cells(lines[2]) == ["smoa", "0.001", "1", "n/a", "1,000", "1.5000", "7.0", "12", "100"]


def test_compare_trains_each_method_and_seed_in_its_folder(tiny_model_dir, train_file, tmp_path):
    """Two methods on the tiny model: one run folder each, each at its own rate, and compare.json lists them."""
    from smoa.training.compare import run_compare

    values = tiny_recipe_values(
        tiny_model_dir,
        train_file,
        tmp_path / "compare",
        method_args={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        method_learning_rates={"lora": 1e-3},
        max_steps=2,
        eval_steps=2,
        save_steps=2,
    )
    lines: list[str] = []
    results = run_compare(load_recipe(None, **values), ["smoa", "lora"], [3], log=lines.append)
    assert [(r.method, r.learning_rate, r.steps) for r in results] == [("smoa", 5e-3, 2), ("lora", 1e-3, 2)]
    assert [Path(r.run_dir).name for r in results] == ["smoa-seed3", "lora-seed3"]
    for r in results:
        assert Path(r.run_dir).parent == tmp_path / "compare"
        assert (Path(r.adapter_dir) / "adapter_model.safetensors").is_file()
        assert r.trainable_params > 0
    assert "=== smoa-seed3 ===" in lines and "=== lora-seed3 ===" in lines
    saved = json.loads((tmp_path / "compare" / "compare.json").read_text())
    assert saved == [json.loads(json.dumps(r.__dict__)) for r in results]
    table = compare_table(results).splitlines()
    assert [cells(line)[:3] for line in table[2:]] == [["smoa", "0.005", "1"], ["lora", "0.001", "1"]]
    assert [cells(line)[4] for line in table[2:]] == [f"{r.trainable_params:,}" for r in results]
