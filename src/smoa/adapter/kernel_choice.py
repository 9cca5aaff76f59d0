"""Which kernel computes an SMoA layer's forward, and whether its branch may be added in place.

Every kernel is exact (:mod:`smoa.adapter.autograd`); the choice is one of speed and memory:

* ``"fused"``: the whole layer as one matmul, ``y = x (W0 + ΔW)ᵀ + b``;
* ``"blockwise"``: ``y = base(x) + Σ_a x ΔW_aᵀ``, block by block, never forming a ``d_out × d_in`` matrix;
* ``"reference"``: the same sum through plain autograd of :func:`smoa.adapter.functional.delta_output` (also taken
  whenever the anchors need a gradient, i.e. a trainable base weight, which only plain autograd handles);
* ``"auto"``: fused when :func:`use_fused_kernel` allows it and the input has at least ``fuse_min_tokens`` rows, else
  blockwise.

Both fast kernels touch ``O(d_out·d_in)`` numbers per call whatever the token count (an unmerged SMoA layer is never
as cheap as the base; merge for generation), and fused was the faster of the two from a single token on
(``benchmarks/RESULTS.md``), hence the layer's default ``fuse_min_tokens = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

KERNELS = ("auto", "fused", "blockwise", "reference")


def use_fused_kernel(
    kernel: str,
    x: Tensor,
    base: nn.Module,
    dropouts: Sequence[nn.Module],
    has_forward_args: bool,
    in_features: int,
    min_tokens: int,
) -> bool:
    """Whether ``x (..., d_in)`` goes through the fused kernel ``x (W0 + ΔW)ᵀ + b`` of the float ``base`` layer.

    ``dropouts`` holds the dropout module of each active adapter. Fused needs exactly one active adapter without
    active dropout (the branch must see the base's input), no extra forward arguments, a frozen base weight in
    float32/float64 without forward hooks or accelerate's ``_hf_hook``, and no autocast; then ``"fused"`` takes it
    always and ``"auto"`` from ``x.numel() >= min_tokens · in_features`` on (``in_features = d_in``).
    """
    if kernel not in ("auto", "fused") or len(dropouts) != 1 or has_forward_args:
        return False
    (dropout,) = dropouts
    if isinstance(dropout, nn.Dropout) and dropout.training:
        return False
    if base.weight.requires_grad or base._forward_hooks or base._forward_pre_hooks or hasattr(base, "_hf_hook"):
        return False
    # W0 + ΔW is formed in the compute dtype: in bf16/fp16 (or under autocast) rounding it to 8-11 significant
    # bits would swallow updates smaller than W0's last bit, which the separate base + branch sum keeps.
    if base.weight.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(x.device.type):
        return False
    return kernel == "fused" or x.numel() >= min_tokens * in_features


def branch_kernel(kernel: str, anchors_require_grad: bool) -> Literal["blockwise", "reference"]:
    """The kernel of the branch ``x ΔWᵀ`` added to the base output: ``"reference"`` when asked for or when the
    anchors carry a gradient, else ``"blockwise"``."""
    return "reference" if anchors_require_grad or kernel == "reference" else "blockwise"


def add_in_place(kernel: str, anchors_require_grad: bool, result: Tensor, base: nn.Module) -> bool:
    """Whether the branch may be summed into the base output ``result`` in place: the blockwise kernel writes it,
    and :func:`output_is_private` says no one else can hold ``result``."""
    return branch_kernel(kernel, anchors_require_grad) == "blockwise" and output_is_private(result, base)


def output_is_private(result: Tensor, base: nn.Module) -> bool:
    """Whether the base layer's output ``result`` may be written in place: no one else can hold it.

    Not when a forward hook (on ``base`` or global) may have kept it, when it is a view of another tensor
    (``result._base``) or not contiguous, when it is a leaf that requires grad, or under ``torch.compile`` (which
    traces functionally). The global hooks and ``_base`` are torch internals: if a torch release drops either
    attribute, the answer is "not private" and the branch is added out of place (same values, one extra tensor).
    """
    global_hooks = getattr(torch.nn.modules.module, "_global_forward_hooks", None)
    return (
        global_hooks is not None
        and not global_hooks
        and not base._forward_hooks
        and result.is_contiguous()
        and getattr(result, "_base", result) is None
        and not (result.is_leaf and result.requires_grad)
        and not torch.compiler.is_compiling()
    )
