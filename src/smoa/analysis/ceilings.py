"""The analytic update-rank ceiling of methods on a model, from its config alone (meta device, no weights).

All counting is the method registry's (:func:`smoa.methods.plan_method`); this module only lays its numbers out
per target layer type, next to the layer shapes and the full rank ``min(d_out, d_in)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoa.methods import Budget, ModelSpec, get_method, load_model_spec, plan_method


@dataclass(frozen=True)
class CeilingRow:
    """One method on one model: its setting, cost and rank ceiling per target layer type."""

    method: str
    settings: dict[str, Any]
    trainable_params: int
    params_percent: float
    ceilings: dict[str, int]  # layer type → max over layers of that type of the rank ceiling
    full_rank: dict[str, int]  # layer type → min(d_out, d_in)
    shapes: dict[str, str]  # layer type → "d_out×d_in"
    mergeable: bool
    note: str = ""


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``"smoa"`` or ``"smoa:r=16,num_blocks=4"`` → ``("smoa", {"r": 16, "num_blocks": 4})`` (values read as JSON)."""
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"method override {part!r} in {text!r} is not key=value (e.g. smoa:r=16,num_blocks=4)")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    method = get_method(name.strip())
    for key, value in overrides.items():
        paper = method.paper.get(key)
        if isinstance(paper, (int, float)) and not isinstance(paper, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"method override {key}={value!r} in {text!r} must be a number (paper value {paper})")
            if isinstance(paper, int) and not isinstance(value, int):
                raise ValueError(
                    f"method override {key}={value!r} in {text!r} must be an integer (paper value {paper})"
                )
    return name.strip(), overrides


def rank_ceiling_table(
    model: str | Path | ModelSpec,
    methods: Sequence[str | tuple[str, Mapping[str, Any]]],
    budget: Budget = "paper",
    target_modules: Sequence[str] | None = None,
) -> list[CeilingRow]:
    """Rank ceiling per target layer type for each method (a name or ``(name, overrides)``) on ``model``.

    ``model``: a named config (``smollm2-135m``, ``llama-2-7b`` ...), a Hugging Face folder or a ``ModelSpec``; it is
    built on the meta device. Only weight adapters have a ceiling; prompt-learning methods raise ``ValueError``.
    """
    spec = load_model_spec(model)
    rows = []
    for item in methods:
        name, overrides = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
        method = get_method(name)
        if method.layer_rank is None:
            raise ValueError(f"{name} is not a weight adapter and has no update rank; choose a weight-adapter method")
        plan = plan_method(name, spec, budget, target_modules=target_modules, **overrides)
        layers = spec.select(list(plan.target_modules))
        shapes, full = {}, {}
        for layer in layers:
            shapes.setdefault(layer.kind, f"{layer.d_out}×{layer.d_in}")
            full[layer.kind] = max(full.get(layer.kind, 0), min(layer.d_in, layer.d_out))
        rows.append(
            CeilingRow(
                method=name,
                settings={k: v for k, v in plan.settings.items() if not k.endswith("dropout")},
                trainable_params=plan.trainable_params,
                params_percent=plan.params_percent,
                ceilings=dict(plan.rank_ceilings),
                full_rank=full,
                shapes=shapes,
                mergeable=plan.mergeable,
                note=method.rank_note,
            )
        )
    return rows
