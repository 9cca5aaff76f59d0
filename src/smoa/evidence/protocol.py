"""A memorisation experiment, declared in a YAML file before it runs, and its resumable runner.

Order of the runs (``<out>/runs/<id>.json``, one per finished run; a killed runner continues where it stopped):
for each arm in the declared order, its learning-rate sweep at ``sweep_seed`` (with up to ``extensions`` rates
beyond an edge of the grid, ×/÷ √10, when the best rate is at an edge), then its final runs at the chosen rate with
every seed of ``seeds``. The rate is chosen on the value-token loss over all training pairs at the final step
(the training loss; the task *is* the training pairs), ties to the smaller rate, diverged runs last. An arm with a
single declared rate is not swept (a fixed rate, e.g. one a full experiment chose).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from smoa._io import write_json_atomic
from smoa.evidence.run import FULL, RunSpec, run_memorize
from smoa.study.protocol import choose_rate, rate_label
from smoa.training.recipe import RecipeError, read_yaml_mapping

RUN_KEYS = tuple(
    f.name for f in fields(RunSpec) if f.name not in ("method", "learning_rate", "seed", "target_params", "method_args")
)
TOP_KEYS = ("name", "out", "train", "budgets", "arms", "sweep_seed", "seeds", "extensions", "primary")


class EvidenceError(RecipeError):
    """The experiment file is invalid; the message names the key."""


@dataclass(frozen=True)
class ArmSpec:
    """One arm: a method at a budget (``budget`` None for full fine-tuning) with its rate grid."""

    name: str
    method: str
    budget: str | None
    method_args: dict[str, Any]
    rates: tuple[float, ...]


@dataclass(frozen=True)
class Experiment:
    name: str
    out: Path
    train: dict[str, Any]
    budgets: dict[str, int]
    arms: tuple[ArmSpec, ...]
    sweep_seed: int
    seeds: tuple[int, ...]
    extensions: int
    primary: dict[str, Any]

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    def arm(self, name: str) -> ArmSpec:
        return next(a for a in self.arms if a.name == name)

    def spec(self, arm: ArmSpec, rate: float, seed: int) -> RunSpec:
        budget = None if arm.budget is None else self.budgets[arm.budget]
        return RunSpec(arm.method, rate, seed, budget, arm.method_args, **self.train)


def _require(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise EvidenceError(f"{where}: key {key!r} is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EvidenceError(f"{where}: key {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def load_experiment(path: str) -> Experiment:
    """Read and check an experiment file (see ``recipes/evidence-memorize-cpu.yaml``)."""
    data = read_yaml_mapping(path, "experiment file", EvidenceError)
    where = f"experiment file {path}"
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise EvidenceError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    train = _require(data, "train", dict, where)
    bad = sorted(set(train) - set(RUN_KEYS))
    if bad:
        raise EvidenceError(f"{where}: unknown key train.{bad[0]}; allowed: {', '.join(RUN_KEYS)}")
    if "targets" in train:
        train["targets"] = tuple(train["targets"])
    budgets = {}
    for name, value in _require(data, "budgets", dict, where).items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise EvidenceError(f"{where}: budgets.{name} must be a positive parameter count, got {value!r}")
        budgets[str(name)] = value
    arms = []
    for name, entry in _require(data, "arms", dict, where).items():
        at = f"{where}, arms.{name}"
        method = _require(entry, "method", str, at)
        budget = entry.get("budget")
        if method != FULL and budget not in budgets:
            raise EvidenceError(f"{at}: key 'budget' must name one of budgets ({', '.join(budgets)}), got {budget!r}")
        rates = tuple(float(r) for r in _require(entry, "rates", list, at))
        if len(rates) < 1 or any(not (math.isfinite(r) and r > 0) for r in rates):
            raise EvidenceError(f"{at}: key 'rates' must be positive learning rates, got {list(rates)}")
        arms.append(
            ArmSpec(str(name), method, None if method == FULL else budget, dict(entry.get("method_args") or {}), rates)
        )
    seeds = tuple(_require(data, "seeds", list, where))
    sweep_seed = _require(data, "sweep_seed", int, where)
    if sweep_seed in seeds:
        raise EvidenceError(f"{where}: sweep_seed {sweep_seed} must not be one of seeds {list(seeds)}")
    return Experiment(
        name=_require(data, "name", str, where),
        out=Path(_require(data, "out", str, where)),
        train=train,
        budgets=budgets,
        arms=tuple(arms),
        sweep_seed=sweep_seed,
        seeds=seeds,
        extensions=int(data.get("extensions", 2)),
        primary=_require(data, "primary", dict, where),
    )


def run_id(kind: str, arm: str, rate: float | None = None, seed: int | None = None) -> str:
    return f"sweep-{arm}-lr{rate_label(rate)}" if kind == "sweep" else f"final-{arm}-seed{seed}"


def load_runs(experiment: Experiment) -> dict[str, dict[str, Any]]:
    """Every finished run's JSON, by id, each checked against the experiment (:func:`check_run`)."""
    folder = experiment.runs_dir
    runs = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            runs[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise EvidenceError(
                f"{path}: not valid JSON ({error.msg}, line {error.lineno}); delete it to rerun"
            ) from None
        check_run(experiment, path, runs[path.stem])
    for key, run in runs.items():  # a final run is at its arm's chosen rate (the sweeps' choice, or the fixed rate)
        if key.startswith("final-"):
            state, rate = chosen_rate(experiment, experiment.arm(run["arm"]), runs)
            if state != "chosen" or rate_label(rate) != rate_label(run["spec"]["learning_rate"]):
                raise EvidenceError(
                    f"{folder / key}.json: a final run at lr {run['spec']['learning_rate']:g}, but the arm's sweep "
                    + (f"chose {rate:g}" if state == "chosen" else "is not finished")
                    + "; move it out of the runs folder"
                )
    return runs


def check_run(experiment: Experiment, path: Path, run: dict[str, Any]) -> None:
    """A run file must be one the experiment declares, trained with the settings it declares now: its id is its
    file name, its arm is declared, and its recorded settings equal the experiment's for that arm, rate and seed.
    Otherwise the experiment file changed under finished runs (or the file is foreign), and mixing them would be
    silently wrong: :class:`EvidenceError` names the file and the first differing setting."""
    spec = run.get("spec")
    if (
        run.get("id") != path.stem
        or not isinstance(spec, dict)
        or run.get("arm") not in {a.name for a in experiment.arms}
    ):
        raise EvidenceError(
            f"{path}: not a run of experiment {experiment.name!r} (its id, arm or settings are missing or foreign); "
            "move it out of the runs folder"
        )
    arm = experiment.arm(run["arm"])
    expected = experiment.spec(arm, spec.get("learning_rate"), spec.get("seed"))
    wanted = json.loads(json.dumps({**asdict(expected), "method_args": dict(expected.method_args)}))
    kind = "sweep" if path.stem.startswith("sweep-") else "final"
    if path.stem != run_id(kind, arm.name, wanted["learning_rate"], wanted["seed"]):
        raise EvidenceError(f"{path}: its file name does not match its recorded rate and seed; move it out")
    for key in sorted(set(wanted) | set(spec)):
        if wanted.get(key) != spec.get(key):
            raise EvidenceError(
                f"{path}: trained with {key}={spec.get(key)!r}, but the experiment now declares {wanted.get(key)!r}; "
                "restore the experiment file, or give it a new out folder"
            )


def final_loss(run: dict[str, Any]) -> float:
    """The selection criterion: value-token loss on all pairs at the final step (inf when diverged)."""
    final = run.get("final")
    return math.inf if not final else float(final["value_loss"])


def chosen_rate(experiment: Experiment, arm: ArmSpec, runs: dict[str, dict[str, Any]]) -> tuple[str, float | None]:
    """``("run", rate)`` when a sweep rate is still to train, else ``("chosen", rate)``. An arm declared with one
    rate is not swept: that rate is fixed."""
    if len(arm.rates) == 1:
        return "chosen", arm.rates[0]
    losses: dict[float, float] = {}
    for rate in arm.rates:
        key = run_id("sweep", arm.name, rate)
        if key not in runs:
            return "run", rate
        losses[rate] = final_loss(runs[key])
    extensions = 0
    while True:
        verdict, rate = choose_rate(losses, extensions, experiment.extensions)
        if verdict == "chosen":
            return "chosen", rate
        key = run_id("sweep", arm.name, rate)
        if key not in runs:
            return "run", rate
        losses[rate] = final_loss(runs[key])
        extensions += 1


def next_run(experiment: Experiment, runs: dict[str, dict[str, Any]]) -> tuple[str, ArmSpec, float, int] | None:
    """The next run to do as ``(id, arm, rate, seed)``, or None when the experiment is complete."""
    for arm in experiment.arms:
        verdict, rate = chosen_rate(experiment, arm, runs)
        if verdict == "run":
            return run_id("sweep", arm.name, rate), arm, rate, experiment.sweep_seed
        for seed in experiment.seeds:
            key = run_id("final", arm.name, seed=seed)
            if key not in runs:
                return key, arm, rate, seed
    return None


def run_experiment(experiment: Experiment, log: Callable[[str], None] = print, max_runs: int | None = None) -> int:
    """Run (or continue) the experiment; returns how many runs were done now. Every run of this process records the
    commit read here, at its start (the code it runs), whatever the checkout does meanwhile."""
    from smoa.evidence.run import git_commit

    git_commit()
    runs = load_runs(experiment)
    done = 0
    while max_runs is None or done < max_runs:
        task = next_run(experiment, runs)
        if task is None:
            break
        key, arm, rate, seed = task
        log(f"{experiment.name}: {key}")
        result = {
            "id": key,
            "arm": arm.name,
            "kind": key.split("-")[0],
            **run_memorize(experiment.spec(arm, rate, seed), log),
        }
        write_json_atomic(experiment.runs_dir / f"{key}.json", result, indent=1, non_finite="null")
        runs[key] = result
        done += 1
    return done


def pending(experiment: Experiment) -> Iterator[str]:
    """Ids of the runs that are ready to run now (the next one)."""
    task = next_run(experiment, load_runs(experiment))
    if task is not None:
        yield task[0]
