"""The memorisation experiment file and its run order: sweeps with edge extensions, then the seeds."""

from __future__ import annotations

import pytest
import yaml

from smoa.evidence.protocol import EvidenceError, load_experiment, next_run, run_id

BASE = {
    "name": "t",
    "out": "OUT",
    "train": {"n_pairs": 16, "steps": 2},
    "budgets": {"low": 100},
    "arms": {"a": {"method": "lora", "budget": "low", "rates": [0.01, 0.0316]}, "f": {"method": "full", "rates": [1e-3]}},
    "sweep_seed": 0,
    "seeds": [1, 2],
    "primary": {"metric": "char_accuracy"},
}


def _write(tmp_path, **changes):
    data = {**BASE, "out": str(tmp_path / "out"), **changes}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _run(loss):
    return {"final": {"value_loss": loss}}


def test_sweep_extends_past_an_edge_then_runs_the_seeds(tmp_path):
    experiment = load_experiment(_write(tmp_path))
    runs = {}
    assert next_run(experiment, runs)[0] == run_id("sweep", "a", 0.01)
    runs[run_id("sweep", "a", 0.01)] = _run(2.0)
    runs[run_id("sweep", "a", 0.0316)] = _run(1.0)  # best at the upper edge: extend
    key, _, rate, seed = next_run(experiment, runs)
    assert key == "sweep-a-lr0.0999" and seed == 0  # 0.0316 · √10
    runs[key] = _run(1.5)
    key, _, rate, seed = next_run(experiment, runs)
    assert (key, rate, seed) == ("final-a-seed1", 0.0316, 1)
    runs[key] = _run(0.0)
    runs["final-a-seed2"] = _run(0.0)
    assert next_run(experiment, runs)[0] == "sweep-f-lr0.001"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": 1}, "unknown key 'colour'"),
        ({"train": {"n_pair": 3}}, "unknown key train.n_pair"),
        ({"budgets": {"low": -1}}, "budgets.low must be a positive"),
        ({"arms": {"a": {"method": "lora", "budget": "mid", "rates": [0.1]}}}, "arms.a: key 'budget'"),
        ({"arms": {"a": {"method": "lora", "budget": "low", "rates": [0]}}}, "arms.a: key 'rates'"),
        ({"seeds": [0, 1]}, "sweep_seed 0 must not be one of seeds"),
    ],
)
def test_bad_experiment_files_name_the_key(tmp_path, changes, message):
    with pytest.raises(EvidenceError, match=message):
        load_experiment(_write(tmp_path, **changes))
