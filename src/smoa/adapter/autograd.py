"""A memory-lean exact autograd path for the SMoA branch output ``x ΔWᵀ``.

Plain autograd through :func:`smoa.adapter.functional.delta_output` saves every gathered anchor ``M_k`` and every
block ``ΔM_k`` for backward: ``2·d_out·d_in/K`` numbers per layer. This function saves only the branch input ``x``,
the factors and the index vectors, and gathers the anchors again from the frozen weight in backward.

Gradients (``g = ∂L/∂y``, ``T_k = B_k A_k``, ``ΔM_k = s·T_k ⊙ M_k``, ``x_k = x[..., C_k]``, ``g_k = g[..., R_k]``)::

    ∂L/∂x[..., C_k] = g_k ΔM_k
    ∂L/∂T_k          = s · (g_kᵀ x_k) ⊙ M_k
    ∂L/∂B_k          = ∂L/∂T_k A_kᵀ,    ∂L/∂A_k = B_kᵀ ∂L/∂T_k
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import block_anchor, block_indices


class _BlockwiseDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, row_order, col_order, scaling, num_blocks, *factors):  # type: ignore[override]
        a, b = factors[:num_blocks], factors[num_blocks:]
        x2 = x.reshape(-1, x.shape[-1])
        rows_k = block_indices(row_order, num_blocks)
        cols_k = block_indices(col_order, num_blocks)
        out = x2.new_empty((x2.shape[0], weight.shape[0]))
        for rows, cols, a_k, b_k in zip(rows_k, cols_k, a, b, strict=True):
            delta = (b_k @ a_k).mul_(block_anchor(weight, rows, cols)).mul_(scaling)
            out.index_copy_(1, rows, x2.index_select(1, cols) @ delta.T)
        ctx.save_for_backward(x, weight, row_order, col_order, *factors)
        ctx.scaling = scaling
        ctx.num_blocks = num_blocks
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, row_order, col_order, *factors = ctx.saved_tensors
        num_blocks, scaling = ctx.num_blocks, ctx.scaling
        a, b = factors[:num_blocks], factors[num_blocks:]
        x2 = x.reshape(-1, x.shape[-1])
        g2 = grad_out.reshape(-1, grad_out.shape[-1]).to(x2.dtype)
        need_x = ctx.needs_input_grad[0]
        grad_x = x2.new_empty(x2.shape) if need_x else None
        grad_a: list[Tensor | None] = []
        grad_b: list[Tensor | None] = []
        rows_k = block_indices(row_order, num_blocks)
        cols_k = block_indices(col_order, num_blocks)
        for k, (rows, cols, a_k, b_k) in enumerate(zip(rows_k, cols_k, a, b, strict=True)):
            if need_x:
                delta = (b_k @ a_k).mul_(block_anchor(weight, rows, cols)).mul_(scaling)
                grad_x.index_copy_(1, cols, g2.index_select(1, rows) @ delta)
            need_a, need_b = ctx.needs_input_grad[6 + k], ctx.needs_input_grad[6 + num_blocks + k]
            g_a, g_b = block_factor_grads(g2, x2, weight, rows, cols, a_k, b_k, scaling, need_a, need_b)
            grad_a.append(g_a)
            grad_b.append(g_b)
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape)
        return (grad_x, None, None, None, None, None, *grad_a, *grad_b)


def blockwise_delta_output(
    x: Tensor,
    weight: Tensor,
    row_order: Tensor,
    col_order: Tensor,
    a: list[Tensor],
    b: list[Tensor],
    scaling: float,
) -> Tensor:
    """``x ΔWᵀ`` with the lean backward above; same contract as :func:`smoa.adapter.functional.delta_output`.

    ``weight`` must be frozen (no gradient flows to it); the anchors are cast to the dtype of ``a`` block by block.
    """
    if weight.requires_grad:
        raise ValueError("blockwise_delta_output needs a frozen base weight; use functional.delta_output instead")
    return _BlockwiseDelta.apply(x, weight, row_order, col_order, scaling, len(a), *a, *b)


class _FusedLinear(torch.autograd.Function):
    """``y = x (W0 + ΔW)ᵀ + bias`` in one matmul, with parameter gradients from the diagonal blocks only.

    Cost (N tokens, square d, K blocks), against the frozen base layer's ``2·N·d²``: forward ``N·d²``, input
    gradient ``N·d²``, factor gradients ``N·d²/K``, plus ``O(d²)`` to build ``W0 + ΔW`` — twice, since the
    ``(d_out, d_in)`` matrix is rebuilt in backward instead of being saved.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, row_order, col_order, scaling, num_blocks, *factors):  # type: ignore[override]
        a, b = factors[:num_blocks], factors[num_blocks:]
        effective = _effective_weight(weight, row_order, col_order, a, b, scaling, x.dtype)
        out = torch.nn.functional.linear(x, effective, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(x, weight, row_order, col_order, *factors)
        ctx.scaling, ctx.num_blocks, ctx.has_bias = scaling, num_blocks, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, row_order, col_order, *factors = ctx.saved_tensors
        num_blocks, scaling = ctx.num_blocks, ctx.scaling
        a, b = factors[:num_blocks], factors[num_blocks:]
        x2 = x.reshape(-1, x.shape[-1])
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_bias = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_a: list[Tensor | None] = []
        grad_b: list[Tensor | None] = []
        rows_k = block_indices(row_order, num_blocks)
        cols_k = block_indices(col_order, num_blocks)
        # factor gradients first: their block temporaries are freed before the (d_out, d_in) matrix is built
        for k, (rows, cols, a_k, b_k) in enumerate(zip(rows_k, cols_k, a, b, strict=True)):
            need_a, need_b = ctx.needs_input_grad[7 + k], ctx.needs_input_grad[7 + num_blocks + k]
            g_a, g_b = block_factor_grads(g2, x2, weight, rows, cols, a_k, b_k, scaling, need_a, need_b)
            grad_a.append(g_a)
            grad_b.append(g_b)
        grad_x = None
        if ctx.needs_input_grad[0]:
            effective = _effective_weight(weight, row_order, col_order, a, b, scaling, g2.dtype)
            grad_x = (g2 @ effective).reshape(x.shape).to(x.dtype)
        return (grad_x, None, grad_bias, None, None, None, None, *grad_a, *grad_b)


def block_factor_grads(
    g2: Tensor,
    x2: Tensor,
    weight: Tensor,
    rows: Tensor,
    cols: Tensor,
    a_k: Tensor,
    b_k: Tensor,
    scaling: float,
    need_a: bool,
    need_b: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """``(∂L/∂A_k, ∂L/∂B_k)`` from ``g2 (N, d_out)`` and ``x2 (N, d_in)``: ``∂L/∂T_k = s·(g_kᵀ x_k) ⊙ M_k``, computed
    in row chunks of the block so that block-sized temporaries stay at a fraction of a block."""
    if not (need_a or need_b):
        return None, None
    common = torch.promote_types(g2.dtype, x2.dtype)
    x_k = x2.index_select(1, cols).to(common)
    grad_a = torch.zeros_like(a_k) if need_a else None
    grad_b = torch.empty_like(b_k) if need_b else None
    for start, stop in row_chunks(len(rows)):
        chunk = rows[start:stop]
        grad_t = (g2.index_select(1, chunk).to(common).T @ x_k).to(a_k.dtype)
        grad_t.mul_(block_anchor(weight, chunk, cols)).mul_(scaling)
        if need_a:
            grad_a.addmm_(b_k[start:stop].T, grad_t)
        if need_b:
            torch.mm(grad_t, a_k.T, out=grad_b[start:stop])
    return grad_a, grad_b


def row_chunks(n_rows: int, parts: int = 4) -> list[tuple[int, int]]:
    """Split a block's rows into ``parts`` slices so block-sized temporaries stay at 1/parts of a block."""
    step = max(1, -(-n_rows // parts))
    return [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def _effective_weight(weight, row_order, col_order, a, b, scaling, dtype) -> Tensor:
    """``W0 + ΔW`` as a new ``(d_out, d_in)`` tensor in ``dtype``; ``weight`` is the original ``W0``."""
    num_blocks = len(a)
    effective = weight.to(dtype=dtype, copy=True)
    rows_k, cols_k = block_indices(row_order, num_blocks), block_indices(col_order, num_blocks)
    for rows, cols, a_k, b_k in zip(rows_k, cols_k, a, b, strict=True):
        for start, stop in row_chunks(len(rows)):
            chunk = rows[start:stop]
            anchor = block_anchor(weight, chunk, cols)
            block = (b_k[start:stop] @ a_k).mul_(anchor).mul_(scaling).add_(anchor)  # M_k + ΔM_k
            effective.index_put_((chunk.unsqueeze(1), cols.unsqueeze(0)), block.to(dtype))
    return effective


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

    ``x (..., d_in)`` in the compute dtype (that of ``weight`` unless autocast or the caller chose otherwise);
    ``weight (d_out, d_in)`` is the frozen original ``W0``. No ``(d_out, d_in)`` tensor is kept for backward.
    """
    if weight.requires_grad:
        raise ValueError("fused_linear needs a frozen base weight; use functional.delta_output instead")
    return _FusedLinear.apply(x, weight, bias, row_order, col_order, scaling, len(a), *a, *b)
