"""Expressivity at equal parameters: how closely each method's family of ``ΔW`` can match a target update.

For a real SmolLM2 weight ``W0 (m × n)`` and a target ``ΔW*``, each method's ``ΔW`` at the trainable count of a
LoRA of rank ``r`` (``r (m + n)``) is fitted to the target:

- LoRA: the truncated SVD of ``ΔW*`` at rank ``r`` — its exact Frobenius optimum (Eckart–Young);
- SMoA, HiRA, MoRA, MeLoRA: their own PEFT layers on that one module, planned to the same count, with the factors
  fitted by Adam on ``‖ΔW − ΔW*‖²_F / ‖ΔW*‖²_F`` (``ΔW`` read from the layer's forward), at the best of a
  small learning-rate grid.

Reported per fit: the relative Frobenius error ``‖ΔW − ΔW*‖_F / ‖ΔW*‖_F``, the error on real activations
``‖(ΔW − ΔW*) X‖_F / ‖ΔW* X‖_F`` (``X``: the module's inputs on the memorisation data, ``n × tokens``), and the
entropy effective rank of ``ΔW``, ``exp(−Σ p_i ln p_i)`` with ``p = σ / Σσ``.

Targets (each scaled to ``‖ΔW*‖_F = 0.1 ‖W0‖_F``, which leaves relative errors unchanged):
``real`` — a full fine-tuning update of the module (the memorisation task); ``gaussian`` — dense i.i.d. normal;
``rank8`` — a product of two Gaussian factors of rank 8 (LoRA's home ground); ``w0_hadamard`` — ``W0 ⊙ R`` with
``R`` dense normal (the home ground of SMoA and HiRA, whose updates are multiplied by ``W0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TARGETS = ("real", "gaussian", "rank8", "w0_hadamard")
FITTED = {
    "smoa": ({"num_blocks": 2, "lora_dropout": 0.0}, (1e-2, 1e-1, 1.0)),
    "hira": ({}, (1e-2, 1e-1, 1.0)),
    "mora": ({"lora_dropout": 0.0}, (1e-3, 1e-2, 1e-1)),
    "melora": ({"lora_dropout": 0.0}, (1e-3, 1e-2, 1e-1)),
}


def effective_rank(delta: torch.Tensor) -> float:
    """Entropy effective rank ``exp(−Σ p ln p)``, ``p = σ / Σσ`` (Roy & Vetterli); 0 for a zero matrix."""
    sigma = torch.linalg.svdvals(delta.double())
    total = sigma.sum()
    if total == 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def errors(delta: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> dict[str, float]:
    """Relative Frobenius and activation errors of ``delta`` against ``target``; ``inputs`` is ``(n, tokens)``."""
    residual = (delta - target).double()
    return {
        "frobenius_error": float(residual.norm() / target.double().norm()),
        "activation_error": float((residual @ inputs.double()).norm() / (target.double() @ inputs.double()).norm()),
        "effective_rank": effective_rank(delta),
    }


def truncated_svd(target: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of ``target`` in Frobenius norm."""
    u, s, vh = torch.linalg.svd(target.double(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).to(target.dtype)


def make_target(kind: str, weight: torch.Tensor, real: torch.Tensor | None, seed: int) -> torch.Tensor:
    """One target update for ``weight (m × n)``, scaled to ``0.1 ‖W0‖_F`` (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    m, n = weight.shape
    if kind == "real":
        if real is None:
            raise ValueError("the real target needs a fine-tuning update of this module")
        target = real
    elif kind == "gaussian":
        target = torch.randn(m, n, generator=generator)
    elif kind == "rank8":
        target = torch.randn(m, 8, generator=generator) @ torch.randn(8, n, generator=generator)
    elif kind == "w0_hadamard":
        target = weight * torch.randn(m, n, generator=generator)
    else:
        raise ValueError(f"unknown target {kind!r}; choose one of {', '.join(TARGETS)}")
    return target * (0.1 * weight.norm() / target.norm())


def effective_delta(layer: nn.Module) -> torch.Tensor:
    """``(m, n)`` additive update of an adapted linear layer as its forward applies it:
    ``ΔW = (layer(I_n) − base(I_n))ᵀ`` (dropout must be 0 and the layer in the mode it is fitted in)."""
    base = layer.get_base_layer()
    eye = torch.eye(base.in_features, dtype=base.weight.dtype, device=base.weight.device)
    return (layer(eye) - base(eye)).T


def fit_method(
    model: nn.Module,
    module_name: str,
    method: str,
    budget: int,
    target: torch.Tensor,
    rate: float,
    steps: int = 300,
) -> tuple[torch.Tensor, int, list[float]]:
    """Fit ``method``'s ``ΔW`` on module ``module_name`` of ``model`` to ``target`` by Adam.

    ``ΔW`` is what the adapted layer computes, read from its forward: ``ΔWᵀ = layer(I) − base(I)`` on the identity
    ``I`` of the input dimension (:func:`effective_delta`), so a method whose ``get_delta_weight`` is not the
    additive update (PEFT's HiRA returns ``BA``; its layer adds ``(W0 ⊙ BA) x``) is fitted as it behaves.
    Returns ``(ΔW, trainable, loss curve every 50 steps)``; ``model`` is restored (the adapter unloaded) after.
    """
    import re

    from peft import get_peft_model

    import smoa  # noqa: F401  (registers SMoA and the baselines with PEFT)
    from smoa.methods import plan_method

    settings, _ = FITTED[method]
    plan = plan_method(method, model, "matched", budget, re.escape(module_name), **settings)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, plan.peft_config())
    try:
        layer = peft_model.get_submodule("base_model.model." + module_name)
        parameters = [p for p in peft_model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in parameters)
        optimizer = torch.optim.Adam(parameters, lr=rate)
        scale = target.pow(2).sum()
        curve = []
        for step in range(steps + 1):
            delta = effective_delta(layer)
            loss = (delta - target).pow(2).sum() / scale
            if step % 50 == 0:
                curve.append(float(loss.detach()))
            if step == steps or not torch.isfinite(loss):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return delta.detach(), trainable, curve
    finally:
        peft_model.unload()


def plan_reachable(model: nn.Module, module_name: str, method: str, budget: int) -> None:
    """Raise :class:`~smoa.methods.planning.BudgetUnreachableError` when ``method`` cannot match ``budget`` on the
    module (MeLoRA's block structure caps it below LoRA r=32 on a narrow projection, for instance)."""
    import re

    from smoa.methods import plan_method

    plan_method(method, model, "matched", budget, re.escape(module_name), **FITTED[method][0])


def fit_all(
    model: nn.Module,
    module_name: str,
    target: torch.Tensor,
    inputs: torch.Tensor,
    ranks: tuple[int, ...],
    steps: int = 300,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every method at every budget against one target; the fitted methods at their best rate of :data:`FITTED`."""
    weight = model.get_submodule(module_name).weight.detach()
    m, n = weight.shape
    out: dict[str, Any] = {}
    for rank in ranks:
        budget = rank * (m + n)
        row: dict[str, Any] = {"lora": {"trainable": budget, **errors(truncated_svd(target, rank), target, inputs)}}
        for method, (_, rates) in FITTED.items():
            from smoa.methods.planning import BudgetUnreachableError

            try:
                plan_reachable(model, module_name, method, budget)
            except BudgetUnreachableError as error:
                row[method] = {"unreachable": str(error).split(" on ")[0]}
                continue
            tried = {}
            for rate in rates:
                delta, trainable, curve = fit_method(model, module_name, method, budget, target, rate, steps)
                final = curve[-1] if math.isfinite(curve[-1]) else math.inf
                tried[rate] = (final, delta, trainable, curve)
            best = min(tried, key=lambda r: (tried[r][0], r))
            _, delta, trainable, curve = tried[best]
            row[method] = {
                "trainable": trainable,
                "rate": best,
                "rates": {str(r): v[0] for r, v in tried.items()},
                "curve": curve,
                **errors(delta, target, inputs),
            }
        log(
            f"  {module_name} r={rank}: "
            + ", ".join(f"{k} {v.get('frobenius_error', math.nan):.3f}" for k, v in row.items())
        )
        out[str(rank)] = row
    return out


#: The matrices fitted: every target on the late layer's four kinds; the dense targets on an early q and a middle
#: down projection (the real update exists only where the memorisation experiment fine-tunes: layers 28–29).
LATE_LAYER = 28
MATRICES: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    *((LATE_LAYER, kind, TARGETS) for kind in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")),
    *(
        (layer, kind, ("gaussian", "w0_hadamard"))
        for layer in (2, 15)
        for kind in ("self_attn.q_proj", "mlp.down_proj")
    ),
)
RANKS = (8, 32)
REAL_UPDATE = {"learning_rate": 1e-3, "seed": 1}  # full fine-tuning of layers 28–29 on the memorisation pairs


def real_updates(names: list[str], log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """``W_ft − W0`` of ``names`` after full fine-tuning of the memorisation experiment's modules (top 2 layers)."""
    from smoa.evidence.run import FULL, RunSpec, run_memorize

    captured: dict[str, torch.Tensor] = {}

    def read(model: nn.Module) -> None:
        for name in names:
            captured[name] = model.get_submodule(name).weight.detach().clone()

    run_memorize(RunSpec(FULL, REAL_UPDATE["learning_rate"], REAL_UPDATE["seed"], None), log, on_trained=read)
    return captured


def module_inputs(model: nn.Module, names: list[str], pairs: int = 128) -> dict[str, torch.Tensor]:
    """``(n, tokens)`` inputs of each module on ``pairs`` memorisation sequences (seed 1), from forward hooks."""
    from smoa.evidence.memorize import encode_pairs, make_pairs
    from smoa.models import load_tokenizer

    data = encode_pairs(make_pairs(pairs, 8, 8, REAL_UPDATE["seed"]), load_tokenizer())
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, args, _o, name=name: seen.__setitem__(name, args[0].detach().flatten(0, 1).T.clone())
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            model(input_ids=data.input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def run_expressivity(out: str, steps: int = 100, log: Callable[[str], None] = print) -> int:
    """Fit every (matrix, target) of :data:`MATRICES` not yet done; one JSON per pair in ``out``. Returns how many
    were fitted now."""
    from pathlib import Path

    from smoa._io import write_json_atomic
    from smoa.evidence.run import git_commit
    from smoa.models import load_model

    git_commit()  # the code this process runs, read before anything can move the checkout
    folder = Path(out)
    every = [(layer, kind, target) for layer, kind, targets in MATRICES for target in targets]
    seeds = {item: seed for seed, item in enumerate(every)}  # fixed per (matrix, target), whatever is resumed
    todo = [
        (layer, kind, target)
        for layer, kind, target in every
        if not (folder / f"layer{layer}-{kind.split('.')[-1]}-{target}.json").is_file()
    ]
    if not todo:
        return 0
    model = load_model()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    names = sorted({f"model.layers.{layer}.{kind}" for layer, kind, _ in todo})
    inputs = module_inputs(model, names)
    late = [n for n in names if f".{LATE_LAYER}." in n]
    fine_tuned = real_updates(late, log) if any(t == "real" for *_, t in todo) else {}
    for layer, kind, target_kind in todo:
        name = f"model.layers.{layer}.{kind}"
        weight = model.get_submodule(name).weight.detach()
        real = fine_tuned[name] - weight if name in fine_tuned else None
        target = make_target(target_kind, weight, real, seed=seeds[layer, kind, target_kind])
        log(f"expressivity: {name} ← {target_kind}")
        result = {
            "module": name,
            "target": target_kind,
            "shape": list(weight.shape),
            "target_effective_rank": effective_rank(target),
            "fits": fit_all(model, name, target, inputs[name], RANKS, steps, log),
            "steps": steps,
            "real_update": REAL_UPDATE if target_kind == "real" else None,
            "git_commit": git_commit(),
        }
        write_json_atomic(
            folder / f"layer{layer}-{kind.split('.')[-1]}-{target_kind}.json", result, indent=1, non_finite="null"
        )
    return len(todo)
