"""Checks of the base layer an SMoA adapter is put on, each run before any SVD, with errors that say what to do.

SMoA anchors its blocks on the base weight itself (``M_k = W0[R_k][:, C_k]``), so it needs a layer whose weight is a
plain floating-point ``W0``: ``torch.nn.Linear`` (``(d_out, d_in)``) or transformers' ``Conv1D`` (stored transposed);
bitsandbytes' layers are dequantised by :mod:`smoa.adapter.bnb`. Each block ``k`` (rows ``R_k``, columns ``C_k``,
rank ``r_k``) must be able to hold its rank: ``r_k <= min(|R_k|, |C_k|)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from smoa.dense import UnsupportedLayerError

from . import functional as F


def dense_dims(base: nn.Module, module_name: str) -> tuple[int, int]:
    """``(d_in, d_out)`` of a Linear or Conv1D base (a Conv1D's shape as DeepSpeed ZeRO-3 records it when the
    weight itself is partitioned away); anything else raises :class:`UnsupportedLayerError`."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, Conv1D):
        shape = base.weight.ds_shape if hasattr(base.weight, "ds_shape") else base.weight.shape
        d_in, d_out = shape
        return d_in, d_out
    raise UnsupportedLayerError(unsupported_layer_message(module_name, base))


def unsupported_layer_message(module_name: str, module: nn.Module) -> str:
    """The error for a target of a type SMoA cannot adapt, naming the module, its type and the ways out."""
    return (
        f"SMoA cannot adapt module '{module_name}' of type {type(module).__module__}.{type(module).__qualname__}: "
        "only torch.nn.Linear, transformers' Conv1D and bitsandbytes' Linear4bit / Linear8bitLt are supported "
        "(quantised layers of other libraries, e.g. GPTQ, AWQ or HQQ, store codes SMoA cannot anchor on). Load the "
        "base in float or with transformers' BitsAndBytesConfig, or remove the module from target_modules (or add "
        "it to exclude_modules)."
    )


def check_float_weight(base: nn.Module, module_name: str) -> None:
    """Refuse a base layer whose stored weight is not a plain floating-point matrix (quantised codes, packed
    storage, integer dtypes): its entries are not W0, and anchoring on them would silently train the wrong update.
    (bitsandbytes layers are wrapped by :mod:`smoa.adapter.bnb`, which dequantises them, and never get here.)"""
    weight = getattr(base, "weight", None)
    kind = f"{type(base).__module__}.{type(base).__qualname__}"
    if weight is None or not torch.is_floating_point(weight) or type(weight).__name__ not in ("Parameter", "Tensor"):
        what = "no weight" if weight is None else f"a {type(weight).__name__} of dtype {weight.dtype}"
        raise UnsupportedLayerError(
            f"module '{module_name}' ({kind}) stores {what}, not a floating-point weight matrix: SMoA anchors its "
            "blocks on W0 itself and cannot read it from quantised or packed storage (only bitsandbytes 4-bit and "
            "8-bit bases are dequantised for it). Load the base in float32/bfloat16/float16 or with transformers' "
            "BitsAndBytesConfig, or exclude this module."
        )


def check_finite(weight: Tensor, module_name: str) -> None:
    """Refuse NaN/Inf in a base weight before any SVD (which would fail or give meaningless orders)."""
    finite = torch.isfinite(weight)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"The base weight of module '{module_name}' has {bad} NaN/Inf entries; SMoA's spectral orders need a "
            "finite weight. Check the checkpoint the base model was loaded from."
        )


def check_block_sizes(
    d_out: int, d_in: int, num_blocks: int, ranks: Sequence[int], r: int, module_name: str
) -> tuple[list[int], list[int]]:
    """The block sizes ``(|R_k| for k, |C_k| for k)`` of a ``(d_out, d_in)`` layer split into ``num_blocks`` blocks
    (:func:`smoa.adapter.functional.split_sizes`), after refusing ``num_blocks > min(d_out, d_in)`` and any block
    rank ``r_k > min(|R_k|, |C_k|)`` (the extra parameters could learn nothing)."""
    smaller = min(d_out, d_in)
    if num_blocks > smaller:
        raise ValueError(
            f"SMoAConfig.num_blocks={num_blocks} is larger than the smaller dimension ({smaller}) of module "
            f"'{module_name}' (shape {d_out}x{d_in}); use num_blocks <= {smaller} or exclude this module."
        )
    rows, cols = F.split_sizes(d_out, num_blocks), F.split_sizes(d_in, num_blocks)
    for k, (r_k, n, c) in enumerate(zip(ranks, rows, cols, strict=True)):
        if r_k > min(n, c):
            raise ValueError(
                f"SMoAConfig r={r} gives block {k} of module '{module_name}' rank {r_k}, more than its "
                f"block size {n}x{c} allows (the extra parameters could learn nothing); use r <= "
                f"{num_blocks * min(min(rows), min(cols))} for this module, or exclude it."
            )
    return rows, cols
