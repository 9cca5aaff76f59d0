"""Deploying an SMoA adapter trained on a quantised base onto a full-precision copy of that base.

SMoA's update depends on the base weight: ``ΔW[R_k, C_k] = s·(B_k A_k) ⊙ W0[R_k, C_k]``. An adapter trained on a
4-bit or 8-bit base learned its factors against the DEQUANTISED ``W0``; loading it onto the full-precision base
would anchor the same factors on other numbers (and change ``ΔW`` by roughly the quantisation error, ~10 % for nf4).
The usual QLoRA deployment, "full-precision base + the trained update", is therefore done here by computing every
``ΔW`` on the quantised model and adding it to the full-precision weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer import SMoALayer


def merge_into_full_precision(
    adapted: nn.Module, full_precision: nn.Module, adapter_names: list[str] | None = None
) -> nn.Module:
    """``W ← W + Σ ΔW`` in ``full_precision`` for every SMoA layer of ``adapted``, one layer at a time.

    Args:
        adapted: the model carrying the SMoA adapter(s), usually on the quantised base it was trained on (a
            ``PeftModel`` or its ``base_model``); every ``ΔW`` is anchored on that model's dequantised ``W0``.
        full_precision: the same architecture with plain float weights (e.g. the base loaded without
            ``quantization_config``); its module names must match the adapted model's (``layer.module_name``).
        adapter_names: the adapters to merge (default: each layer's active adapters).

    Returns:
        ``full_precision``, modified in place; it holds no adapter layers and saves as a plain checkpoint.
    """
    layers = [module for module in adapted.modules() if isinstance(module, SMoALayer)]
    if not layers:
        raise ValueError("merge_into_full_precision: the adapted model has no SMoA layers; pass the PeftModel.")
    for layer in layers:
        try:
            target = full_precision.get_submodule(layer.module_name)
        except AttributeError as err:
            raise ValueError(
                f"merge_into_full_precision: the full-precision model has no module '{layer.module_name}' (adapted "
                "in the SMoA model); load the same architecture as the adapted base."
            ) from err
        weight = getattr(target, "weight", None)
        if not isinstance(weight, torch.Tensor) or type(weight) not in (nn.Parameter, torch.Tensor):
            raise TypeError(
                f"merge_into_full_precision: module '{layer.module_name}' of the full-precision model "
                f"({type(target).__qualname__}) has no plain float weight; load that model without quantization."
            )
        names = adapter_names if adapter_names is not None else list(layer.active_adapters)
        names = [name for name in names if name in layer.smoa_A]
        if not names:
            continue
        delta = sum(layer.get_delta_weight(name, dtype=torch.float32) for name in names)
        if delta.shape != weight.shape:
            raise ValueError(
                f"merge_into_full_precision: module '{layer.module_name}' has weight shape {tuple(weight.shape)} in "
                f"the full-precision model but {tuple(delta.shape)} in the adapted one; they are not the same base."
            )
        with torch.no_grad():
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return full_precision


__all__ = ["merge_into_full_precision"]
