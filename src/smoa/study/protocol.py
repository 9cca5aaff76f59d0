"""A study: methods compared fairly — each at its own learning rate, chosen the same way, then several seeds.

A study file (YAML) fixes the protocol before any test number is seen::

    name: study-cpu
    output_dir: runs/study-cpu          # checkpoints and adapters (large, not committed)
    results_dir: docs/study/cpu         # one JSON per finished run, the summary and the figures (committed)
    recipe: {...}                       # the training recipe every run shares (keys of `smoa train --help-recipe`)
    arms:                               # name → method, its learning-rate grid and method_args overrides
      smoa: {method: smoa, learning_rates: [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2]}
      lora: {method: lora, learning_rates: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]}
    ablations:                          # name → an arm's method at that arm's chosen rate, other method_args
      smoa-identity: {of: smoa, method_args: {permutation: identity}}
    primary: [smoa, lora]               # run first; the headline difference is primary[0] − primary[1]
    sweep_seed: 0                       # the learning-rate sweep's seed (no test evaluation in the sweep)
    seeds: [1, 2, 3]                    # the final runs' seeds (a seed fixes init, data subset and order)
    extend_grid: 2                      # a best rate at an end of the grid adds the next value beyond it (×√10)
    evaluation: {tasks: [commonsense], limit: 100, seed: 0, method: loglik, batch_size: 16,
                 generate: {arms: [smoa, lora], limit: 25, seeds: [1]}}

The learning rate of an arm is the grid value with the lowest validation loss (the minimum over the run's
evaluations, i.e. the best checkpoint's loss; ties go to the smaller rate). When it is the smallest or largest grid
value, the next value beyond (×/÷ √10) is trained too, up to ``extend_grid`` times, so the choice is not an edge of
an arbitrary grid. An arm may instead give one ``learning_rate`` chosen elsewhere (by an earlier study's sweep,
say): it is not swept. Test sets are evaluated only for the final runs, with one fixed subsample (``evaluation.seed``)
shared by every arm and seed, so the comparison is paired example by example.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from smoa.training.recipe import Recipe, RecipeError, apply_overrides, load_recipe, read_yaml_mapping

STUDY_KEYS = (
    "name", "output_dir", "results_dir", "recipe", "arms", "ablations", "primary", "sweep_seed", "seeds",
    "extend_grid", "evaluation", "bootstrap", "comparisons",
)  # fmt: skip
_EVAL_KEYS = ("tasks", "limit", "seed", "method", "batch_size", "generate")
_GENERATE_KEYS = ("arms", "limit", "seeds", "num_beams", "batch_size")
GRID_STEP = math.sqrt(10.0)


class StudyError(RecipeError):
    """A study file is invalid."""


@dataclass(frozen=True)
class Arm:
    """One method in the study: its learning-rate grid and method_args on top of the shared recipe."""

    name: str
    method: str
    learning_rates: tuple[float, ...]
    method_args: dict[str, Any] = field(default_factory=dict)
    fixed: bool = False  # one rate chosen elsewhere (``learning_rate:``, e.g. by another study's sweep): no sweep


@dataclass(frozen=True)
class Ablation:
    """A variant of ``of``'s method trained at ``of``'s chosen rate with other ``method_args``."""

    name: str
    of: str
    method_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    """The paper's generation protocol as a check, on a smaller subsample."""

    arms: tuple[str, ...] = ()
    limit: int = 25
    seeds: tuple[int, ...] = ()
    num_beams: int | None = None
    batch_size: int = 8


@dataclass(frozen=True)
class Evaluation:
    tasks: tuple[str, ...] = ("commonsense",)
    limit: int | None = 100
    seed: int = 0
    method: str = "loglik"
    batch_size: int = 16
    generate: Generation = Generation()


@dataclass(frozen=True)
class Study:
    name: str
    output_dir: str
    results_dir: str
    recipe: Recipe
    arms: dict[str, Arm]
    ablations: dict[str, Ablation]
    primary: tuple[str, str]
    sweep_seed: int
    seeds: tuple[int, ...]
    extend_grid: int
    evaluation: Evaluation
    bootstrap: int = 10_000
    comparisons: tuple[tuple[str, str], ...] = ()

    @property
    def runs_dir(self) -> str:
        """Where the per-run result JSONs live."""
        return os.path.join(self.results_dir, "runs")

    def variant(self, name: str) -> tuple[str, dict[str, Any]]:
        """``(method, method_args)`` of an arm or an ablation."""
        if name in self.arms:
            arm = self.arms[name]
            return arm.method, {**self.recipe.method_args, **arm.method_args}
        ablation = self.ablations[name]
        method, args = self.variant(ablation.of)
        return method, {**args, **ablation.method_args}

    def all_comparisons(self) -> list[tuple[str, str]]:
        """The headline pair first, then ``comparisons`` (default: primary[0] against every other arm/ablation)."""
        pairs = [self.primary]
        extra = list(self.comparisons) or [
            (self.primary[0], other) for other in [*self.arms, *self.ablations] if other not in self.primary
        ]
        return pairs + [p for p in extra if p != self.primary]


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _unknown(values: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in values:
        if key not in allowed:
            raise StudyError(f"{where}: unknown key '{key}' (allowed: {', '.join(allowed)})")


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StudyError(f"{where}={value!r} must be a positive number") from None
    if isinstance(value, bool) or not number > 0 or not math.isfinite(number):
        raise StudyError(f"{where}={value!r} must be a positive number")
    return number


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyError(f"{where}={value!r} must be an integer >= {minimum}")
    return value


def parse_study(data: dict[str, Any], source: str = "study") -> Study:
    """Build and check a :class:`Study` from a mapping (see the module docstring for the keys)."""
    _unknown(data, STUDY_KEYS, source)
    name = data.get("name", "study")
    recipe_values = _mapping(data.get("recipe"), f"{source}: recipe")
    recipe = load_recipe(None, **{k: v for k, v in recipe_values.items() if k != "name"}, name=name)
    arms = {}
    for arm_name, spec in _mapping(data.get("arms"), f"{source}: arms").items():
        spec = _mapping(spec, f"{source}: arms.{arm_name}")
        _unknown(spec, ("method", "learning_rates", "learning_rate", "method_args"), f"{source}: arms.{arm_name}")
        fixed = "learning_rate" in spec
        if fixed and "learning_rates" in spec:
            raise StudyError(
                f"{source}: arms.{arm_name}: give learning_rates (a grid to sweep) or learning_rate (one rate "
                "chosen elsewhere), not both"
            )
        if fixed:
            rates = [_number(spec["learning_rate"], f"{source}: arms.{arm_name}.learning_rate")]
        else:
            rates = spec.get("learning_rates")
            if not isinstance(rates, list) or len(rates) < 2:
                raise StudyError(
                    f"{source}: arms.{arm_name}.learning_rates must list at least two rates (or give one "
                    "learning_rate chosen elsewhere)"
                )
            rates = sorted(_number(r, f"{source}: arms.{arm_name}.learning_rates") for r in rates)
        arms[arm_name] = Arm(
            arm_name,
            str(spec.get("method", arm_name)),
            tuple(rates),
            _mapping(spec.get("method_args"), f"{source}: arms.{arm_name}.method_args"),
            fixed,
        )
    if len(arms) < 2:
        raise StudyError(f"{source}: arms must name at least two methods to compare")
    ablations = {}
    for ab_name, spec in _mapping(data.get("ablations"), f"{source}: ablations").items():
        spec = _mapping(spec, f"{source}: ablations.{ab_name}")
        _unknown(spec, ("of", "method_args"), f"{source}: ablations.{ab_name}")
        if spec.get("of") not in arms or ab_name in arms:
            raise StudyError(f"{source}: ablations.{ab_name}.of must name an arm ({', '.join(arms)})")
        ablations[ab_name] = Ablation(ab_name, spec["of"], _mapping(spec.get("method_args"), ab_name))
    primary = tuple(data.get("primary") or list(arms)[:2])
    if len(primary) != 2 or any(p not in arms for p in primary) or primary[0] == primary[1]:
        raise StudyError(f"{source}: primary must name two different arms, got {list(primary)!r}")
    seeds = data.get("seeds", [1, 2, 3])
    if not isinstance(seeds, list) or not seeds:
        raise StudyError(f"{source}: seeds must be a non-empty list of integers")
    seeds = tuple(_int(s, f"{source}: seeds") for s in seeds)
    evaluation = _mapping(data.get("evaluation"), f"{source}: evaluation")
    _unknown(evaluation, _EVAL_KEYS, f"{source}: evaluation")
    generate = _mapping(evaluation.get("generate"), f"{source}: evaluation.generate")
    _unknown(generate, _GENERATE_KEYS, f"{source}: evaluation.generate")
    for arm_name in generate.get("arms", []):
        if arm_name not in arms and arm_name not in ablations:
            raise StudyError(f"{source}: evaluation.generate.arms names unknown arm {arm_name!r}")
    limit = evaluation.get("limit", 100)
    eval_method = evaluation.get("method", "loglik")
    if eval_method not in ("loglik", "cloze", "generate"):
        raise StudyError(f"{source}: evaluation.method={eval_method!r}: choose loglik, cloze or generate")
    tasks = evaluation.get("tasks", ["commonsense"])
    evaluation = Evaluation(
        tasks=tuple([tasks] if isinstance(tasks, str) else tasks),
        limit=None if limit is None else _int(limit, f"{source}: evaluation.limit", 1),
        seed=_int(evaluation.get("seed", 0), f"{source}: evaluation.seed"),
        method=eval_method,
        batch_size=_int(evaluation.get("batch_size", 16), f"{source}: evaluation.batch_size", 1),
        generate=Generation(
            arms=tuple(generate.get("arms", [])),
            limit=_int(generate.get("limit", 25), f"{source}: evaluation.generate.limit", 1),
            seeds=tuple(_int(s, f"{source}: evaluation.generate.seeds") for s in generate.get("seeds", seeds[:1])),
            num_beams=generate.get("num_beams"),
            batch_size=_int(generate.get("batch_size", 8), f"{source}: evaluation.generate.batch_size", 1),
        ),
    )
    comparisons = []
    for pair in data.get("comparisons") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in arms or p in ablations for p in pair)):
            raise StudyError(f"{source}: comparisons entries must be [arm, arm] pairs, got {pair!r}")
        comparisons.append(tuple(pair))
    return Study(
        name=name,
        output_dir=str(data.get("output_dir") or os.path.join("runs", name)),
        results_dir=str(data.get("results_dir") or os.path.join("runs", name, "results")),
        recipe=recipe,
        arms=arms,
        ablations=ablations,
        primary=primary,  # type: ignore[arg-type]
        sweep_seed=_int(data.get("sweep_seed", 0), f"{source}: sweep_seed"),
        seeds=seeds,
        extend_grid=_int(data.get("extend_grid", 2), f"{source}: extend_grid"),
        evaluation=evaluation,
        bootstrap=_int(data.get("bootstrap", 10_000), f"{source}: bootstrap", 100),
        comparisons=tuple(comparisons),
    )


def load_study(path: str, overrides: list[str] | None = None) -> Study:
    """Read a study YAML file; ``overrides`` are ``key=value`` settings of the shared training recipe."""
    data = read_yaml_mapping(path, "study file", StudyError)
    recipe = apply_overrides(_mapping(data.get("recipe"), f"study file {path}: recipe"), overrides)
    return parse_study({**data, "recipe": recipe}, f"study file {path}")


def rate_label(rate: float) -> str:
    """A file-name-safe label of a learning rate, three significant digits: ``0.003``, ``0.0316``."""
    return f"{rate:.3g}"


def choose_rate(best_losses: dict[float, float], extensions_used: int, limit: int) -> tuple[str, float]:
    """The chosen rate, or the next rate to train when the best one sits at an end of the rates trained so far.

    Args:
        best_losses: rate → best validation loss, for every rate trained so far (the grid and its extensions).
        extensions_used: how many rates beyond the declared grid have been added.
        limit: how many may be added.

    Returns:
        ``("chosen", rate)`` or ``("extend", rate)``; ties go to the smaller rate and non-finite losses (diverged
        runs) rank last.
    """
    rates = sorted(best_losses)
    finite = {r: (v if math.isfinite(v) else math.inf) for r, v in best_losses.items()}
    best = min(rates, key=lambda r: (finite[r], r))
    if extensions_used < limit and math.isfinite(finite[best]):
        if best == rates[0]:
            return "extend", rates[0] / GRID_STEP
        if best == rates[-1]:
            return "extend", rates[-1] * GRID_STEP
    return "chosen", best
