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
    "arms": {
        "a": {"method": "lora", "budget": "low", "rates": [0.01, 0.0316]},
        "f": {"method": "full", "rates": [1e-3]},
    },
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


def _stored(experiment, arm, rate, seed, **result):
    """A run JSON as the runner writes it: id, arm and the full settings, plus ``result``."""
    import json
    from dataclasses import asdict

    spec = experiment.spec(experiment.arm(arm), rate, seed)
    key = run_id("sweep" if seed == experiment.sweep_seed else "final", arm, rate, seed)
    settings = json.loads(json.dumps({**asdict(spec), "method_args": dict(spec.method_args)}))
    return key, {"id": key, "arm": arm, "spec": settings, **result}


def _save(experiment, runs):
    import json

    experiment.runs_dir.mkdir(parents=True, exist_ok=True)
    for key, value in runs.items():
        (experiment.runs_dir / f"{key}.json").write_text(json.dumps(value))


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
    assert next_run(experiment, runs)[:3] == ("final-f-seed1", experiment.arm("f"), 0.001)  # one rate: fixed


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


def test_summary_pairs_seeds_and_gives_the_t_interval(tmp_path):
    from smoa.evidence.summary import summarize
    from smoa.study.intervals import paired_t_interval

    experiment = load_experiment(
        _write(
            tmp_path,
            arms={"a": BASE["arms"]["a"], "b": BASE["arms"]["a"]},
            primary={"difference": ["a", "b"], "step": 2},
        )
    )

    def run(arm, rate, seed, acc, loss=1.0):
        curve = [{"step": 0, "char_accuracy": 0.06, "exact_match": 0.0, "value_loss": 2.7},
                 {"step": 2, "char_accuracy": acc, "exact_match": 0.0, "value_loss": loss}]  # fmt: skip
        return _stored(experiment, arm, rate, seed, curve=curve, final=curve[-1], diverged=None, trainable_params=10,
                       steps_to_half=None, seconds=1.0, git_commit="c")  # fmt: skip

    runs = {}
    for arm in ("a", "b"):
        for rate, loss in ((0.01, 1.0), (0.0316, 2.0), (0.00316, 3.0)):
            runs.__setitem__(*run(arm, rate, 0, 0.1, loss))
    accuracy = {("a", 1): 0.5, ("a", 2): 0.7, ("b", 1): 0.2, ("b", 2): 0.6}
    for (arm, seed), acc in accuracy.items():
        runs.__setitem__(*run(arm, 0.01, seed, acc))
    _save(experiment, runs)
    [comparison] = summarize(experiment)["comparisons"]
    assert comparison["differences"] == pytest.approx([30.0, 10.0])
    assert comparison["low"] == pytest.approx(paired_t_interval([30.0, 10.0])["low"])


def test_command_plans_and_names_a_bad_file_with_exit_2(tmp_path, capsys):
    from smoa.cli.main import main

    assert main(["evidence", "--recipe", _write(tmp_path), "--plan"]) == 0
    assert "0 runs done; next: sweep-a-lr0.01" in capsys.readouterr().out
    assert main(["evidence", "--recipe", _write(tmp_path, seeds=[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoa evidence: experiment file") and "sweep_seed 0" in err and len(err.splitlines()) == 1
    assert main(["evidence"]) == 2 and "--recipe FILE" in capsys.readouterr().err


def test_finished_runs_must_match_the_experiment_as_it_is_declared_now(tmp_path):
    import json

    from smoa.evidence.protocol import load_runs

    experiment = load_experiment(_write(tmp_path, extensions=0))
    runs = dict([_stored(experiment, "a", r, 0, final={"value_loss": v}) for r, v in ((0.01, 1.0), (0.0316, 2.0))])
    runs.__setitem__(*_stored(experiment, "a", 0.01, 1, final={"value_loss": 0.5}))
    _save(experiment, runs)
    assert set(load_runs(experiment)) == set(runs)
    # The recipe is edited under finished runs: every stale run is named, the first one in sorted order.
    longer = load_experiment(_write(tmp_path, extensions=0, train={"n_pairs": 16, "steps": 3}))
    with pytest.raises(
        EvidenceError, match=r"final-a-seed1\.json: trained with steps=2, but the experiment now declares 3"
    ):
        load_runs(longer)
    path = experiment.runs_dir / "final-a-seed2.json"
    path.write_text(json.dumps(_stored(experiment, "a", 0.01, 3, final={"value_loss": 0.5})[1] | {"id": path.stem}))
    with pytest.raises(EvidenceError, match=r"final-a-seed2\.json: its file name does not match"):
        load_runs(experiment)
    path.write_text(json.dumps(_stored(experiment, "a", 0.0316, 2, final={"value_loss": 0.5})[1]))
    with pytest.raises(EvidenceError, match=r"a final run at lr 0.0316, but the arm's sweep chose 0.01"):
        load_runs(experiment)
    path.write_text(json.dumps({"curve": []}))
    with pytest.raises(EvidenceError, match="not a run of experiment 't'"):
        load_runs(experiment)


def test_arms_with_one_fixed_rate_are_summarised_without_a_sweep(tmp_path):
    from smoa.evidence.summary import summarize, summary_markdown

    arms = {
        "a": {"method": "lora", "budget": "low", "rates": [0.01]},
        "b": {"method": "lora", "budget": "low", "rates": [0.1]},
    }
    experiment = load_experiment(_write(tmp_path, arms=arms, primary={"difference": ["a", "b"], "step": 2}))

    def run(arm, rate, seed, acc):
        curve = [
            {"step": s, "char_accuracy": a, "exact_match": 0.0, "value_loss": 1.0} for s, a in ((1, acc / 2), (2, acc))
        ]
        return _stored(experiment, arm, rate, seed, curve=curve, final=curve[-1], diverged=None, trainable_params=10,
                       steps_to_half=2, seconds=1.0, git_commit="c")  # fmt: skip

    runs = dict(run(arm, rate, seed, acc) for arm, rate, acc in (("a", 0.01, 0.4), ("b", 0.1, 0.8)) for seed in (1, 2))
    _save(experiment, runs)
    summary = summarize(experiment)
    assert set(summary["finals"]) == {"a", "b"} and summary["sweeps"] == {}
    assert summary["comparisons"][0]["differences"] == pytest.approx([-40.0, -40.0])
    text = summary_markdown(summary)
    assert "all 16 training pairs" in text and "Learning-rate sweeps" not in text
    assert "| a | 20.0 | 40.0 |" in text  # accuracy by step: steps 1 and 2


def test_every_committed_evidence_recipe_loads_and_plans(capsys):
    from pathlib import Path

    from smoa.cli.main import main

    recipes = sorted(Path(__file__).resolve().parents[2].glob("recipes/evidence-*.yaml"))
    assert len(recipes) >= 2
    for recipe in recipes:
        load_experiment(recipe)
        assert main(["evidence", "--recipe", str(recipe), "--plan"]) == 0, recipe
    capsys.readouterr()
