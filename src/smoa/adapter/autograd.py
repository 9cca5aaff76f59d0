"""Exact custom autograd kernels for an SMoA layer; neither keeps anything of size ``d_out·d_in/K`` for backward.

Notation as in :mod:`smoa.adapter.functional`: ``T_k = B_k A_k``, ``ΔM_k = s·T_k ⊙ M_k`` with the anchor
``M_k = W0[R_k][:, C_k]``, ``x_k = x[..., C_k]``, ``g_k = g[..., R_k]`` for the upstream gradient ``g = ∂L/∂y``.

Gradients::

    ∂L/∂x[..., C_k] = g_k ΔM_k                       (plus g W0 for the base layer)
    G_k              = s · (g_kᵀ x_k) ⊙ M_k           (= ∂L/∂T_k)
    ∂L/∂B_k          = G_k A_kᵀ,     ∂L/∂A_k = B_kᵀ G_k

Two kernels, chosen per call by :class:`smoa.adapter.layer.Linear`:

* :func:`fused_linear` — the whole layer as one matmul with ``W0 + ΔW``, built as ``W0 + W0 ⊙ (B̃ Ã)`` from the
  scattered factors (:func:`smoa.adapter.functional.scattered_factors`: one rank-``r`` product and one elementwise
  pass, no gather from ``W0``). Cost for ``N`` tokens against the frozen layer's ``2·N·d_out·d_in`` multiply-adds:
  ``+N·d_out·d_in/K`` for the diagonal blocks of ``gᵀx`` (factor gradients), ``+2·r·d_out·d_in`` to build
  ``W0 + ΔW`` twice (it is rebuilt in backward rather than kept), and gathers of ``x``, ``g`` (``N·(d_in + d_out)``)
  and of the anchors (``d_out·d_in/K``). Floor: ``1 + 1/(2K)`` times the frozen layer.
* :func:`blockwise_delta_output` — only the branch ``x ΔWᵀ`` (added in place to the base output), block by block; used
  with dropout (the branch sees another input than the base), several active adapters, half-precision compute
  (where rounding ``W0 + ΔW`` to 8 significant bits would swallow small updates), quantised bases (whose anchors
  come from a :class:`BlockAnchors` source instead of a weight tensor) and on request.

Large temporaries come from :mod:`smoa.adapter.scratch` (page-fault free on CPU).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from .functional import block_anchor, block_indices, scattered_factors
from .scratch import Scratch

#: rows of ``W0`` staged at a time while gathering an anchor
_ANCHOR_ROWS = 256


class BlockAnchors(Protocol):
    """A frozen base weight ``W0 (d_out, d_in)`` that cannot be indexed as a tensor (e.g. quantised storage).

    ``gather(blocks, dtype)`` returns ``[W0[R_k][:, C_k] for (R_k, C_k) in blocks]`` in ``dtype``, computed afresh on
    every call (the kernel calls it once in forward and once in backward, so nothing of size ``d_out·d_in/K`` is kept
    between them).
    """

    shape: tuple[int, int]

    def gather(self, blocks: Sequence[tuple[Tensor, Tensor]], dtype: torch.dtype) -> list[Tensor]: ...


def build_effective_weight(
    out: Tensor, weight: Tensor, row_order: Tensor, col_order: Tensor, a: list[Tensor], b: list[Tensor], scaling: float
) -> Tensor:
    """``out ← W0 + W0 ⊙ (B̃ Ã) = W0 + ΔW`` in ``out``'s dtype; ``out (d_out, d_in)``, ``weight`` the original ``W0``."""
    b_full, a_full = scattered_factors(row_order, col_order, a, b, scaling, out.dtype)
    torch.mm(b_full, a_full, out=out)
    w = weight if weight.dtype == out.dtype else weight.to(out.dtype)
    return torch.addcmul(w, w, out, out=out)


def gather_columns(src: Tensor, index: Tensor, out: Tensor) -> Tensor:
    """``out ← src[:, index]`` for a 2-D ``src`` (``torch.gather`` with an expanded index; faster than index_select)."""
    return torch.gather(src, 1, index.expand(src.shape[0], -1), out=out)


def gather_anchor(weight: Tensor, rows: Tensor, cols: Tensor, out: Tensor, staging: Tensor | None) -> Tensor:
    """``out ← W0[rows][:, cols]`` (``(|rows|, |cols|)``), staging ``staging.shape[0]`` rows of ``W0`` at a time."""
    if staging is None or weight.dtype != out.dtype:
        return out.copy_(block_anchor(weight, rows, cols))
    step = staging.shape[0]
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step]
        staged = torch.index_select(weight, 0, chunk, out=staging[: chunk.shape[0]])
        gather_columns(staged, cols, out[start : start + chunk.shape[0]])
    return out


def _block_backward(
    g2: Tensor,
    x2: Tensor,
    weight: Tensor,
    rows: Tensor,
    cols: Tensor,
    a_k: Tensor,
    b_k: Tensor,
    scaling: float,
    needs: tuple[bool, bool, bool],
    anchor: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(g_k ΔM_k, ∂L/∂A_k, ∂L/∂B_k)`` of one block (each ``None`` unless asked for by ``needs``).

    ``g2 (N, d_out)`` and ``x2 (N, d_in)`` share one compute dtype; the factor gradients are returned in the factors'.
    The anchor is gathered from ``weight`` unless given (``(|rows|, |cols|)`` in the compute dtype; ``weight`` is then
    unused). Scratch: ``x_k``, ``g_k``, the anchor, one block-sized buffer (``ΔM_k``, then ``G_k``) and staged rows.
    """
    need_x, need_a, need_b = needs
    if not (need_x or need_a or need_b):
        return None, None, None
    (n, d_in), dtype = x2.shape, x2.dtype
    block, staging = (rows.shape[0], cols.shape[0]), (min(rows.shape[0], _ANCHOR_ROWS), d_in)
    shapes = [(n, block[1]), (n, block[0]), block] + ([block, staging] if anchor is None else [])
    scratch = Scratch(shapes, dtype, x2.device)
    x_k = gather_columns(x2, cols, scratch.take(n, block[1]))
    g_k = gather_columns(g2, rows, scratch.take(n, block[0]))
    work = scratch.take(*block)
    if anchor is None:
        anchor = gather_anchor(weight, rows, cols, scratch.take(*block), scratch.take(*staging))
    a_c, b_c = a_k.to(dtype), b_k.to(dtype)
    grad_x_k = None
    if need_x:
        delta = torch.mm(b_c, a_c, out=work).mul_(anchor).mul_(scaling)  # ΔM_k
        grad_x_k = g_k @ delta
    grad_a = grad_b = None
    if need_a or need_b:
        grad_t = torch.mm(g_k.T, x_k, out=work).mul_(anchor)  # G_k / s
        if need_a:
            grad_a = torch.mm(b_c.T, grad_t).mul_(scaling).to(a_k.dtype)
        if need_b:
            grad_b = torch.mm(grad_t, a_c.T).mul_(scaling).to(b_k.dtype)
    return grad_x_k, grad_a, grad_b


def _blocks(row_order: Tensor, col_order: Tensor, a, b) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``[(R_k, C_k, A_k, B_k)]`` for every block."""
    num_blocks = len(a)
    return list(zip(block_indices(row_order, num_blocks), block_indices(col_order, num_blocks), a, b, strict=True))


def factor_grad_needs(ctx, leading: tuple[str, ...], num_blocks: int) -> list[tuple[bool, bool]]:
    """``[(needs ∂L/∂A_k, needs ∂L/∂B_k)]`` from ``ctx.needs_input_grad`` of a function whose forward takes the
    arguments named in ``leading`` and then ``*A_1..A_K, *B_1..B_K``."""
    first = len(leading)
    needs = ctx.needs_input_grad
    return [(needs[first + k], needs[first + num_blocks + k]) for k in range(num_blocks)]


def _leading_args(forward) -> tuple[str, ...]:
    """The names of a forward's arguments between ``ctx`` and ``*factors`` (checked once, at import)."""
    names = tuple(inspect.signature(forward).parameters)
    if names[0] != "ctx" or names[-1] != "factors":
        raise TypeError(f"{forward.__qualname__} must take (ctx, ..., *factors), not {names}")
    return names[1:-1]


class _BlockwiseDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, into, x, weight, row_order, col_order, scaling, num_blocks, *factors):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        (n, d_in), d_out = x2.shape, weight.shape[0]
        out = x2.new_empty((n, d_out)) if into is None else into.view(n, d_out)
        blocks = _blocks(row_order, col_order, factors[:num_blocks], factors[num_blocks:])
        source = None if isinstance(weight, Tensor) else weight
        anchors = _gathered_anchors(source, blocks, x2.dtype)
        for k, (rows, cols, a_k, b_k) in enumerate(blocks):
            shape = (rows.shape[0], cols.shape[0])
            staging = (min(shape[0], _ANCHOR_ROWS), d_in)
            shapes = [(n, shape[1]), shape, shape, (n, shape[0])] + ([staging] if source is None else [])
            scratch = Scratch(shapes, x2.dtype, x.device)
            x_k = gather_columns(x2, cols, scratch.take(n, shape[1]))
            anchor = scratch.take(*shape)
            if source is None:
                gather_anchor(weight, rows, cols, anchor, scratch.take(*staging))
            else:
                anchor = anchors[k]
            delta = torch.mm(b_k.to(x2.dtype), a_k.to(x2.dtype), out=scratch.take(*shape))
            delta.mul_(anchor).mul_(scaling)
            y_k = torch.mm(x_k, delta.T, out=scratch.take(n, shape[0]))
            if into is None:
                out.scatter_(1, rows.expand(n, -1), y_k)
            else:  # the branch is cast to the output's dtype before the sum, as in `base + branch.to(dtype)`
                out.scatter_add_(1, rows.expand(n, -1), y_k.to(out.dtype))
        del anchors
        if source is None:
            ctx.save_for_backward(x, row_order, col_order, *factors, weight)
        else:  # nothing of the base is kept: backward gathers the anchors again
            ctx.save_for_backward(x, row_order, col_order, *factors)
        ctx.source = source
        ctx.scaling = scaling
        ctx.num_blocks = num_blocks
        if into is None:
            return out.reshape(*x.shape[:-1], d_out)
        ctx.mark_dirty(into)
        return into

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, row_order, col_order, *rest = ctx.saved_tensors
        num_blocks = ctx.num_blocks
        factors = rest[: 2 * num_blocks]
        weight = rest[2 * num_blocks] if ctx.source is None else None
        blocks = _blocks(row_order, col_order, factors[:num_blocks], factors[num_blocks:])
        x2 = x.reshape(-1, x.shape[-1])
        g2 = grad_out.reshape(-1, grad_out.shape[-1]).to(x2.dtype)
        anchors = _gathered_anchors(ctx.source, blocks, x2.dtype)
        need_x = ctx.needs_input_grad[_BLOCKWISE_ARGS.index("x")]
        grad_x = x2.new_empty(x2.shape) if need_x else None
        grad_a: list[Tensor | None] = []
        grad_b: list[Tensor | None] = []
        factor_needs = factor_grad_needs(ctx, _BLOCKWISE_ARGS, num_blocks)
        for k, (rows, cols, a_k, b_k) in enumerate(blocks):
            needs = (need_x, *factor_needs[k])
            anchor = None if anchors is None else anchors[k]
            grad_x_k, g_a, g_b = _block_backward(g2, x2, weight, rows, cols, a_k, b_k, ctx.scaling, needs, anchor)
            if grad_x is not None:
                grad_x.scatter_(1, cols.expand(x2.shape[0], -1), grad_x_k)
            grad_a.append(g_a)
            grad_b.append(g_b)
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape)
        grad_into = grad_out if ctx.needs_input_grad[_BLOCKWISE_ARGS.index("into")] else None
        grads = {"into": grad_into, "x": grad_x}
        return (*(grads.get(name) for name in _BLOCKWISE_ARGS), *grad_a, *grad_b)


_BLOCKWISE_ARGS = _leading_args(_BlockwiseDelta.forward)


def _gathered_anchors(source: BlockAnchors | None, blocks: list, dtype: torch.dtype) -> list[Tensor] | None:
    """Every block's anchor from a :class:`BlockAnchors` source in ``dtype``, or ``None`` for a plain weight tensor."""
    if source is None:
        return None
    return source.gather([(rows, cols) for rows, cols, _, _ in blocks], dtype)


def blockwise_delta_output(
    x: Tensor,
    weight: Tensor | BlockAnchors,
    row_order: Tensor,
    col_order: Tensor,
    a: list[Tensor],
    b: list[Tensor],
    scaling: float,
    into: Tensor | None = None,
) -> Tensor:
    """``x ΔWᵀ`` with the lean backward above; same contract as :func:`smoa.adapter.functional.delta_output`.

    ``x (..., d_in)`` in the factors' dtype; ``weight (d_out, d_in)`` must be frozen (no gradient flows to it), or a
    :class:`BlockAnchors` source for a base whose storage is not a float matrix (its anchors are gathered afresh in
    forward and again in backward; nothing of the base is saved for backward).
    With ``into`` (a contiguous ``(..., d_out)`` tensor, e.g. the base layer's output) the branch is added to it in
    place, block by block, and ``into`` is returned: no separate output and no extra sum pass.
    Cost: ``N·d_out·d_in/K`` forward, twice that backward (input and factor gradients).
    """
    if isinstance(weight, Tensor) and weight.requires_grad:
        raise ValueError("blockwise_delta_output needs a frozen base weight; use functional.delta_output instead")
    if into is not None and (not into.is_contiguous() or into.shape != (*x.shape[:-1], weight.shape[0])):
        raise ValueError(
            f"blockwise_delta_output: `into` must be a contiguous tensor of shape {(*x.shape[:-1], weight.shape[0])}, "
            f"got {tuple(into.shape)} (contiguous={into.is_contiguous()})"
        )
    return _BlockwiseDelta.apply(into, x, weight, row_order, col_order, scaling, len(a), *a, *b)


class _FusedLinear(torch.autograd.Function):
    """``y = x (W0 + ΔW)ᵀ + bias`` in one matmul, with factor gradients from the diagonal blocks of ``gᵀx`` only."""

    @staticmethod
    def forward(ctx, x, weight, bias, row_order, col_order, scaling, num_blocks, *factors):  # type: ignore[override]
        a, b = list(factors[:num_blocks]), list(factors[num_blocks:])
        scratch = Scratch([tuple(weight.shape)], x.dtype, x.device)
        effective = build_effective_weight(scratch.take(*weight.shape), weight, row_order, col_order, a, b, scaling)
        out = torch.nn.functional.linear(x, effective, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(x, weight, row_order, col_order, *factors)
        ctx.scaling, ctx.num_blocks, ctx.has_bias = scaling, num_blocks, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, row_order, col_order, *factors = ctx.saved_tensors
        num_blocks, scaling = ctx.num_blocks, ctx.scaling
        a, b = list(factors[:num_blocks]), list(factors[num_blocks:])
        common = torch.promote_types(grad_out.dtype, x.dtype)
        x2 = x.reshape(-1, x.shape[-1]).to(common)
        g2 = grad_out.reshape(-1, grad_out.shape[-1]).to(common)
        grad_bias = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[_FUSED_ARGS.index("bias")] else None
        grad_a: list[Tensor | None] = []
        grad_b: list[Tensor | None] = []
        factor_needs = factor_grad_needs(ctx, _FUSED_ARGS, num_blocks)
        for k, (rows, cols, a_k, b_k) in enumerate(_blocks(row_order, col_order, a, b)):
            needs = (False, *factor_needs[k])
            _, g_a, g_b = _block_backward(g2, x2, weight, rows, cols, a_k, b_k, scaling, needs)
            grad_a.append(g_a)
            grad_b.append(g_b)
        grad_x = None
        if ctx.needs_input_grad[_FUSED_ARGS.index("x")]:
            scratch = Scratch([tuple(weight.shape)], common, x.device)
            effective = build_effective_weight(scratch.take(*weight.shape), weight, row_order, col_order, a, b, scaling)
            grad_x = (g2 @ effective).reshape(x.shape).to(x.dtype)
        grads = {"x": grad_x, "bias": grad_bias}
        return (*(grads.get(name) for name in _FUSED_ARGS), *grad_a, *grad_b)


_FUSED_ARGS = _leading_args(_FusedLinear.forward)


def fused_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    row_order: Tensor,
    col_order: Tensor,
    a: list[Tensor],
    b: list[Tensor],
    scaling: float,
) -> Tensor:
    """``x (W0 + ΔW)ᵀ + bias`` for the whole layer (base output and adapter together), exact gradients.

    ``x (..., d_in)`` in the compute dtype; ``weight (d_out, d_in)`` is the frozen original ``W0``. Meant for float32
    or float64 compute: ``W0 + ΔW`` is formed in ``x``'s dtype. No ``(d_out, d_in)`` tensor is kept for backward.
    """
    if weight.requires_grad:
        raise ValueError("fused_linear needs a frozen base weight; use functional.delta_output instead")
    return _FusedLinear.apply(x, weight, bias, row_order, col_order, scaling, len(a), *a, *b)
