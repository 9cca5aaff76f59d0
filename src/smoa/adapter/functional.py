"""The SMoA formula as pure functions: tensors in, tensors out.

Notation (one frozen linear layer, effective weight ``W0`` of shape ``(d_out, d_in)``, so ``y = x W0ᵀ``):

* ``W0 = U diag(s) Vᵀ`` (thin SVD in float32), spectral index ``j = 0..q-1`` in descending order of ``s``.
* spectral scores ``score_row[i] = Σ_j j·U[i,j]²s_j² / max(Σ_j U[i,j]²s_j², eps)`` and the same for columns with ``V``.
* orders ``row_order = argsort(score_row)``, ``col_order = argsort(score_col)`` (ascending), cut into ``K`` chunks
  with ``torch.tensor_split`` semantics: ``R_k``, ``C_k``.
* anchors ``M_k = W0[R_k][:, C_k]`` (always the ORIGINAL ``W0``), branches ``A_k (r_k, |C_k|)``, ``B_k (|R_k|, r_k)``.
* update ``ΔW[R_k, C_k] = scaling · (B_k A_k) ⊙ M_k`` for every ``k``, zero elsewhere; ``scaling = lora_alpha / r``
  with ``r = Σ_k r_k`` the total rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

PERMUTATIONS = ("spectral", "identity", "random")


def split_sizes(size: int, num_blocks: int) -> list[int]:
    """Chunk sizes of ``torch.tensor_split(range(size), num_blocks)``: the first ``size % num_blocks`` get one extra."""
    base, extra = divmod(size, num_blocks)
    return [base + (1 if k < extra else 0) for k in range(num_blocks)]


def block_ranks(r: int, num_blocks: int, branch_ranks: Sequence[int] | None = None) -> list[int]:
    """The per-block ranks ``r_k``: ``branch_ranks`` when given, else the total rank ``r`` split evenly over
    ``num_blocks`` branches with the remainder going to the first blocks (``split_sizes(r, num_blocks)``)."""
    return list(branch_ranks) if branch_ranks is not None else split_sizes(r, num_blocks)


def spectral_scores(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Energy-weighted mean spectral index of every row and every column of ``weight``.

    Args:
        weight: ``(d_out, d_in)``, any float dtype; the SVD runs in float32.

    Returns:
        ``(score_row (d_out,), score_col (d_in,))`` in float32. Squares make them independent of SVD signs.
    """
    w = weight.detach().to(torch.float32)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    index = torch.arange(s.shape[0], dtype=torch.float32, device=w.device)
    s2 = s.square()
    eps = torch.finfo(torch.float32).eps
    row_energy = u.square() * s2  # (d_out, q)
    col_energy = vh.square().T * s2  # (d_in, q)
    # the numerator as an elementwise product summed over j, as the authors' code computes it: a matrix product
    # rounds differently in float32 and swaps near-tied coordinates on about a third of SmolLM2's matrices
    score_row = (row_energy * index).sum(dim=1) / row_energy.sum(dim=1).clamp_min(eps)
    score_col = (col_energy * index).sum(dim=1) / col_energy.sum(dim=1).clamp_min(eps)
    return score_row, score_col


def block_orders(weight: Tensor, permutation: str = "spectral", seed: int = 0) -> tuple[Tensor, Tensor]:
    """Row and column orders ``P_out``, ``P_in`` of ``weight`` (``(d_out, d_in)``) as int64 index vectors.

    ``"spectral"``: ascending spectral scores (the method); ``"identity"``: no reordering; ``"random"``: seeded
    uniform permutations (for the paper's ordering ablations). Ties in the scores keep the original order.
    """
    d_out, d_in = weight.shape
    device = weight.device
    if permutation == "spectral":
        score_row, score_col = spectral_scores(weight)
        return torch.argsort(score_row, stable=True), torch.argsort(score_col, stable=True)
    if permutation == "identity":
        return torch.arange(d_out, device=device), torch.arange(d_in, device=device)
    if permutation == "random":
        generator = torch.Generator().manual_seed(seed)
        row = torch.randperm(d_out, generator=generator)
        col = torch.randperm(d_in, generator=generator)
        return row.to(device), col.to(device)
    raise ValueError(f"permutation={permutation!r} is unknown; use one of {PERMUTATIONS}")


def block_indices(order: Tensor, num_blocks: int) -> tuple[Tensor, ...]:
    """The ``num_blocks`` contiguous chunks of an order (``torch.tensor_split`` semantics)."""
    return torch.tensor_split(order, num_blocks)


def block_anchor(weight: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``M_k = weight[rows][:, cols]``: the aligned diagonal block, shape ``(|rows|, |cols|)``."""
    return weight.index_select(0, rows).index_select(1, cols)


def block_delta(a: Tensor, b: Tensor, anchor: Tensor, scaling: float) -> Tensor:
    """``ΔM_k = scaling · (B_k A_k) ⊙ M_k`` with ``a (r_k, c)``, ``b (rows, r_k)``, ``anchor (rows, c)``."""
    return (b @ a) * anchor * scaling


def delta_weight(
    weight: Tensor,
    row_order: Tensor,
    col_order: Tensor,
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    scaling: float,
) -> Tensor:
    """The dense update ``ΔW`` (``(d_out, d_in)``, dtype of ``a``) for the ORIGINAL effective weight ``weight``."""
    num_blocks = len(a)
    out = torch.zeros(weight.shape, dtype=a[0].dtype, device=a[0].device)
    rows_k = block_indices(row_order.to(out.device), num_blocks)
    cols_k = block_indices(col_order.to(out.device), num_blocks)
    w = weight.to(device=out.device)
    for rows, cols, a_k, b_k in zip(rows_k, cols_k, a, b, strict=True):
        anchor = block_anchor(w, rows, cols).to(out.dtype)
        out[rows.unsqueeze(1), cols.unsqueeze(0)] = block_delta(a_k, b_k, anchor, scaling)
    return out


def scattered_factors(
    row_order: Tensor,
    col_order: Tensor,
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    scaling: float,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """The branches placed at their blocks' coordinates: ``(B̃ (d_out, r), Ã (r, d_in))`` with ``r = Σ_k r_k``.

    ``B̃[R_k, ρ_k] = scaling·B_k`` and ``Ã[ρ_k, C_k] = A_k`` for the rank slots ``ρ_k`` of branch ``k``, zero elsewhere.
    Row ``i ∈ R_k`` of ``B̃`` and column ``j ∈ C_l`` of ``Ã`` share rank slots only when ``k = l``, so ``B̃ Ã`` equals
    ``scaling·B_k A_k`` on every block ``(R_k, C_k)`` and zero off the blocks, and

        ``ΔW = W0 ⊙ (B̃ Ã)``

    (SMoA is a Hadamard adapter whose low-rank factor is block-diagonal in the spectral order). Building ``ΔW`` this
    way needs one rank-``r`` product and one elementwise pass, with no gather from ``W0``.
    """
    dtype = dtype or a[0].dtype
    d_out, d_in = row_order.shape[0], col_order.shape[0]
    r = sum(a_k.shape[0] for a_k in a)
    device = a[0].device
    b_full = torch.zeros((d_out, r), dtype=dtype, device=device)
    a_full = torch.zeros((r, d_in), dtype=dtype, device=device)
    rows_k = block_indices(row_order.to(device), len(a))
    cols_k = block_indices(col_order.to(device), len(a))
    start = 0
    for rows, cols, a_k, b_k in zip(rows_k, cols_k, a, b, strict=True):
        stop = start + a_k.shape[0]
        b_full[:, start:stop].index_copy_(0, rows, b_k.to(dtype) * scaling)
        a_full[start:stop].index_copy_(1, cols, a_k.to(dtype))
        start = stop
    return b_full, a_full


def delta_output(
    x: Tensor,
    weight: Tensor,
    row_order: Tensor,
    col_order: Tensor,
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    scaling: float,
) -> Tensor:
    """``x ΔWᵀ`` computed block by block, never forming a ``(d_out, d_in)`` matrix.

    Args:
        x: ``(..., d_in)`` branch input (after dropout), in the dtype of ``a``.
        weight: ``(d_out, d_in)`` original effective weight (anchors are gathered from it).

    Returns:
        ``(..., d_out)``: ``out[..., R_k] = x[..., C_k] ΔM_kᵀ`` for every block ``k``.
    """
    num_blocks = len(a)
    d_out = weight.shape[0]
    rows_k = block_indices(row_order, num_blocks)
    cols_k = block_indices(col_order, num_blocks)
    out = x.new_zeros((*x.shape[:-1], d_out))
    for rows, cols, a_k, b_k in zip(rows_k, cols_k, a, b, strict=True):
        anchor = block_anchor(weight, rows, cols).to(a_k.dtype)
        y_k = x.index_select(-1, cols) @ block_delta(a_k, b_k, anchor, scaling).T
        out = out.index_copy(-1, rows, y_k)
    return out


def trainable_parameters(d_out: int, d_in: int, ranks: Sequence[int]) -> int:
    """``Σ_k r_k (|R_k| + |C_k|)`` for one layer ``W0 (d_out, d_in)`` with ``R = split(d_out, K)``,
    ``C = split(d_in, K)`` and ``K = len(ranks)``."""
    rows, cols = split_sizes(d_out, len(ranks)), split_sizes(d_in, len(ranks))
    return sum(r_k * (n + m) for n, m, r_k in zip(rows, cols, ranks, strict=True))


def rank_ceiling(d_out: int, d_in: int, ranks: Sequence[int]) -> int:
    """Upper bound on ``rank(ΔW)`` of one layer ``W0 (d_out, d_in)`` for full-rank anchors:
    ``Σ_k min(|R_k|, |C_k|, r_k·min(|R_k|, |C_k|))`` with the blocks of :func:`trainable_parameters`.

    ``rank((B A) ⊙ M) ≤ rank(B A)·rank(M)`` bounds each block; with full-rank anchors and ``r_k ≥ 1`` this is
    ``min(|R_k|, |C_k|)`` per block, hence generically ``min(d_out, d_in)`` overall.
    """
    rows, cols = split_sizes(d_out, len(ranks)), split_sizes(d_in, len(ranks))
    return sum(min(r_k * min(n, m), n, m) for n, m, r_k in zip(rows, cols, ranks, strict=True))
