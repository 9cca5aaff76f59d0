"""Budget planning: a method configured for a model at its paper setting or at a matched trainable count."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from peft.config import PeftConfig
from torch import nn
from transformers import PretrainedConfig

from .registry import MethodSpec, get_method, method_names
from .specs import DENSE_TYPES, LayerShape, ModelSpec, UnsupportedTargetError, block_index, load_model_spec

Budget = Literal["paper", "matched"]
BUDGETS: tuple[str, ...] = ("paper", "matched")
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
DEFAULT_TOLERANCE = 0.02


class BudgetUnreachableError(ValueError):
    """No configuration of the method has a trainable count within tolerance of the target."""


@dataclass(frozen=True)
class MethodPlan:
    """A method configured for a model and a budget, with its cost. ``peft_config()`` builds the PEFT config."""

    method: str
    budget: str
    model: str
    settings: dict[str, Any]
    target_modules: tuple[str, ...] | str | None  # a str is a regex, passed to PEFT as such
    trainable_params: int
    base_params: int
    rank_ceilings: dict[str, int] = field(default_factory=dict)
    mergeable: bool = True
    target_params: int | None = None
    spec: ModelSpec | None = field(default=None, repr=False, compare=False)

    @property
    def params_percent(self) -> float:
        """``100 · trainable / (base + trainable)``, the Params% of the papers' tables."""
        return 100.0 * self.trainable_params / (self.base_params + self.trainable_params)

    @property
    def deviation(self) -> float | None:
        """``(trainable − target) / target`` for matched budgets, else None."""
        if self.target_params is None:
            return None
        return (self.trainable_params - self.target_params) / self.target_params

    def peft_config(self) -> PeftConfig:
        """The PEFT config of this plan (SMoA's needs ``smoa.adapter``; the baselines register on import)."""
        import smoa.baselines  # noqa: F401  (registers MeLoRA, MoRA, SSMLoRA with PEFT)

        method = get_method(self.method)
        targets = self.target_modules
        if targets is not None and not isinstance(targets, str):
            targets = list(targets)
        return method.make_config(self.settings, targets, self.spec)


def _resolve_layers(method: MethodSpec, spec: ModelSpec, target_modules: Sequence[str] | str) -> list[LayerShape]:
    layers = spec.select(target_modules)
    for layer in layers:
        if layer.layer_type not in DENSE_TYPES:
            raise UnsupportedTargetError(
                f"{method.name} cannot adapt module {layer.name!r} of type {layer.layer_type}: the registry plans "
                f"weight adapters for {' and '.join(DENSE_TYPES)} layers only. Remove {layer.kind!r} from "
                "target_modules"
            )
    return layers


def _rank_ceilings(method: MethodSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> dict[str, int]:
    ceilings: dict[str, int] = {}
    for layer in layers:
        rank = method.layer_rank(layer, method.layer_settings(layer, settings))
        ceilings[layer.kind] = max(rank, ceilings.get(layer.kind, 0))
    return ceilings


def _make_plan(
    method: MethodSpec,
    spec: ModelSpec,
    budget: str,
    settings: dict[str, Any],
    layers: list[LayerShape],
    targets: tuple[str, ...] | str | None,
    target_params: int | None,
) -> MethodPlan:
    return MethodPlan(
        method=method.name,
        budget=budget,
        model=spec.name,
        settings=settings,
        target_modules=targets,
        trainable_params=method.trainable_params(spec, layers, settings),
        base_params=spec.base_params,
        rank_ceilings=_rank_ceilings(method, layers, settings) if method.layer_rank else {},
        mergeable=method.mergeable,
        target_params=target_params,
        spec=spec,
    )


def closest_knob(count: Callable[[int], int], low: int, high: int, target: int) -> int:
    """The knob in ``[low, high]`` whose (non-decreasing) ``count`` is closest to ``target``; ties go to the smaller."""
    lo, hi = low, high
    while lo < hi:  # smallest knob with count ≥ target (or high)
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > low and abs(count(lo - 1) - target) <= abs(count(lo) - target):
        return lo - 1
    return lo


def plan_method(
    name: str,
    model: str | Path | PretrainedConfig | nn.Module | ModelSpec,
    budget: Budget = "paper",
    target_params: int | None = None,
    target_modules: Sequence[str] | str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    **overrides: Any,
) -> MethodPlan:
    """Configure method ``name`` for ``model`` at a budget and count its cost.

    ``budget="paper"``: the published setting (``overrides`` replace single hyperparameters).
    ``budget="matched"``: the method's knob is set so the trainable count is closest to ``target_params`` (default:
    SMoA's paper count on this model); raises ``BudgetUnreachableError`` when even the knob's extreme values stay
    outside ``target · (1 ± tolerance)``. The achieved count may miss ±tolerance only by the knob's granularity.
    """
    method = get_method(name)
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    spec = load_model_spec(model)
    targets: tuple[str, ...] | str | None = None
    layers: list[LayerShape] = []
    if method.family == "adapter":
        chosen = target_modules if target_modules is not None else DEFAULT_TARGETS
        targets = chosen if isinstance(chosen, str) else tuple(chosen)
        layers = _resolve_layers(method, spec, chosen)
    settings = {**method.paper, **overrides}
    if budget == "paper":
        return _make_plan(method, spec, budget, settings, layers, targets, None)

    target = int(target_params) if target_params is not None else matched_target(spec, target_modules)
    if target <= 0:
        raise ValueError(f"target_params must be a positive parameter count; got {target_params}")

    def count(value: int) -> int:
        return method.trainable_params(spec, layers, method.with_knob(settings, value))

    low, high = method.knob_range(spec, layers, settings)
    smallest, largest = count(low), count(high)
    if smallest > target * (1 + tolerance) or largest < target * (1 - tolerance):
        raise BudgetUnreachableError(
            f"{method.name} cannot reach {target:,} trainable parameters (±{tolerance:.0%}) on {spec.name}: its "
            f"configurations span {smallest:,} ({method.knob}={low}) to {largest:,} ({method.knob}={high})"
            + (f" on targets {targets if isinstance(targets, str) else list(targets)}" if targets else "")
            + ". Choose a target in that range"
            + (" or other target_modules." if targets else ".")
        )
    best = method.with_knob(settings, closest_knob(count, low, high, target))
    achieved = method.trainable_params(spec, layers, best)
    if abs(achieved - target) > tolerance * target and method.pattern_fields:
        best = _mixed_rank_settings(method, spec, layers, settings, count, low, high, target, best)
    return _make_plan(method, spec, budget, best, layers, targets, target)


def _mixed_rank_settings(
    method: MethodSpec,
    spec: ModelSpec,
    layers: list[LayerShape],
    settings: dict[str, Any],
    count: Callable[[int], int],
    low: int,
    high: int,
    target: int,
    uniform: dict[str, Any],
) -> dict[str, Any]:
    """Finer granularity for methods with PEFT per-layer patterns: knob k everywhere, k + 1 in the first m blocks.

    k is the largest knob whose uniform count is ≤ target; m is chosen closest to the target. Keys are the exact
    (escaped) module paths, so PEFT's ``rank_pattern`` / ``alpha_pattern`` match exactly those modules.
    """
    knob = closest_knob(count, low, high, target)
    if count(knob) > target:
        knob -= 1
    if knob < low or knob + 1 > high:
        return uniform
    base, bumped = method.with_knob(settings, knob), method.with_knob(settings, knob + 1)
    blocks: dict[str, list[LayerShape]] = {}
    for layer in layers:
        blocks.setdefault(block_index(layer.name), []).append(layer)
    best, best_gap = uniform, abs(method.trainable_params(spec, layers, uniform) - target)
    keys: list[str] = []
    for block_layers in blocks.values():
        keys.extend(re.escape(layer.name) for layer in block_layers)
        candidate = dict(base)
        for setting, pattern_field in method.pattern_fields.items():
            candidate[pattern_field] = {key: bumped[setting] for key in keys}
        gap = abs(method.trainable_params(spec, layers, candidate) - target)
        if gap < best_gap:
            best, best_gap = candidate, gap
    return best


def matched_target(
    model: str | Path | PretrainedConfig | nn.Module | ModelSpec, target_modules: Sequence[str] | str | None = None
) -> int:
    """The default target of matched budgets: SMoA's trainable count at its paper setting (r = 32, K = 2)."""
    return plan_method("smoa", model, "paper", target_modules=target_modules).trainable_params


def build_peft_config(
    name: str,
    model: str | Path | PretrainedConfig | nn.Module | ModelSpec,
    budget: Budget = "paper",
    target_params: int | None = None,
    target_modules: Sequence[str] | str | None = None,
    **overrides: Any,
) -> PeftConfig:
    """The PEFT config of method ``name`` for ``model`` at ``budget`` (see ``plan_method``); pass it to
    ``peft.get_peft_model(model, config)``."""
    return plan_method(name, model, budget, target_params, target_modules, **overrides).peft_config()


def plan_all(
    model: str | Path | PretrainedConfig | nn.Module | ModelSpec,
    budget: Budget = "paper",
    target_params: int | None = None,
    target_modules: Sequence[str] | str | None = None,
    methods: Sequence[str] | None = None,
) -> list[MethodPlan | Exception]:
    """``plan_method`` for every method (or those given); a method that cannot be planned yields its error."""
    spec = load_model_spec(model)
    if budget == "matched" and target_params is None:
        target_params = matched_target(spec, target_modules)
    plans: list[MethodPlan | Exception] = []
    for name in methods or method_names():
        try:
            plans.append(plan_method(name, spec, budget, target_params, target_modules))
        except (BudgetUnreachableError, UnsupportedTargetError) as error:
            plans.append(error)
    return plans
