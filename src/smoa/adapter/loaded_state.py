"""Checks run on an SMoA layer's state right after ``load_state_dict``, and the marker of an order not loaded yet.

A loaded adapter brings its block orders ``smoa_row_order (d_out,)`` / ``smoa_col_order (d_in,)`` (int64) and the
fingerprint of the base weight it was trained on, ``smoa_fingerprint`` (float64). The orders must be permutations of
``range(d_out)`` / ``range(d_in)``; the fingerprint must match the base the layer wraps, or its anchors
``M_k = W0[R_k][:, C_k]`` would come from other weights and silently change the model. Per adapter,
``base_fingerprint_check`` decides what a mismatch does: ``"error"`` raises, ``"warn"`` warns, ``"off"`` accepts it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import AdapterFileError, check_order, fingerprints_match

#: fills an order buffer whose values will come from a checkpoint (or, failing that, from the SVD)
UNSET_ORDER = -1


def unset_order(size: int) -> Tensor:
    """An order buffer ``(size,)`` of :data:`UNSET_ORDER`: its values are still to be loaded or computed."""
    return torch.full((size,), UNSET_ORDER, dtype=torch.long)


def order_is_set(order: Tensor) -> bool:
    """Whether an order buffer holds a real order (loaded or computed); reads one entry (a device sync)."""
    return bool(order[0] != UNSET_ORDER)


def check_loaded_state(layer: nn.Module, incompatible_keys: Any = None) -> None:
    """``load_state_dict`` post-hook of an SMoA layer: :func:`check_adapter_state` for each of its adapters."""
    for adapter_name in list(layer.smoa_row_order.keys()):
        check_adapter_state(layer, adapter_name)


def check_adapter_state(layer: nn.Module, adapter_name: str, fingerprint_saved: bool = True) -> None:
    """Every loaded order is a permutation of the right size, and the loaded fingerprint matches the base (raising
    or warning as the adapter's ``base_fingerprint_check`` says); ``fingerprint_saved=False``: the file had none, so
    the base cannot be checked (treated as a fingerprint that is not finite)."""
    check_loaded_orders(layer, adapter_name)
    mode = layer.fingerprint_check.get(adapter_name, "error")
    actual = layer._base_fingerprint
    if mode == "off" or actual is None:
        return
    saved = layer.smoa_fingerprint[adapter_name] if fingerprint_saved else torch.full((9,), float("nan"))
    message = fingerprint_problem(adapter_name, layer.module_name, saved, actual)
    if message is None:
        return
    if mode == "error":
        raise AdapterFileError(message)
    warnings.warn(message, stacklevel=2)


def check_loaded_orders(layer: nn.Module, adapter_name: str) -> None:
    """Refuse loaded orders that are not permutations of ``range(d_out)`` / ``range(d_in)`` (unset ones pass)."""
    row_order, col_order = layer.smoa_row_order[adapter_name], layer.smoa_col_order[adapter_name]
    if order_is_set(row_order):
        check_order(row_order, layer.out_features, f"smoa_row_order of module '{layer.module_name}'")
        check_order(col_order, layer.in_features, f"smoa_col_order of module '{layer.module_name}'")


def fingerprint_problem(adapter_name: str, module_name: str, saved: Tensor, actual: Tensor) -> str | None:
    """What is wrong with the ``saved`` fingerprint against the base's ``actual`` one, for people; ``None`` if they
    match. A fingerprint that is missing from the file (left at NaN) or not finite cannot be checked at all."""
    if not bool(torch.isfinite(saved).all()):
        return (
            f"Adapter '{adapter_name}' of module '{module_name}' has no finite base fingerprint "
            f"('{module_name}.smoa_fingerprint' is missing from the adapter file or not finite), so it "
            "cannot be checked against this base. Save the adapter again with smoa, or, to accept an unchecked "
            "base, load the config with SMoAConfig.from_pretrained(dir), set base_fingerprint_check='off', and "
            "pass config=... to PeftModel.from_pretrained."
        )
    if not fingerprints_match(saved, actual):
        return (
            f"Adapter '{adapter_name}' of module '{module_name}' was trained on a different base weight "
            f"(saved fingerprint norm {float(saved[0]):.6g}, this base {float(actual[0]):.6g}). Its block anchors "
            "would come from the wrong weights and silently change the model. Load it onto the base it was made "
            "for, or, if you mean it, load the config with SMoAConfig.from_pretrained(dir), set "
            "base_fingerprint_check='warn' or 'off', and pass config=... to PeftModel.from_pretrained."
        )
    return None
