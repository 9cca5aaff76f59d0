"""Spectral measures of a weight update as pure functions: tensors in, numbers out.

Notation for one adapted layer: ``W0`` the frozen weight and ``W = W0 + ΔW`` the tuned one, both ``(d_out, d_in)``
(so ``y = x Wᵀ``), ``q = min(d_out, d_in)``, thin SVDs ``W0 = U0 diag(s0) V0ᵀ`` and ``W = U diag(s) Vᵀ`` with the
singular values in descending order (spectral index ``j = 0..q-1``).

* **Numerical rank** of ``ΔW``: ``#{j : σ_j(ΔW) > atol}`` with ``atol = 0.005`` (HiRA's count, an absolute level
  that depends on the weights' scale), and ``#{j : σ_j(ΔW) > rtol · σ_max(ΔW)}`` with ``rtol = 1e-3`` (scale-free:
  directions carrying less than 0.1% of the largest singular value are treated as noise). A zero update has rank 0
  under both.
* **Spectral regions**: the index range ``0..q-1`` cut into three contiguous thirds with ``torch.tensor_split``
  semantics (the first parts get one extra index when ``q`` is not divisible by 3): ``head`` (largest singular
  values), ``middle`` and ``tail`` (smallest).
* **Spectrum shift** per region ``R``: ``Σ_{j∈R} s_j / Σ_{j∈R} s0_j − 1``, the relative change of the singular-value
  mass of that region (0 for a zero update; the paper's "right-tail shift" is a positive ``tail`` value), next to the
  per-index ratio ``s_j / s0_j``. Any perturbation lifts the smallest singular values somewhat, so the same shift is
  also computed for a **norm-matched random update** (i.i.d. Gaussian entries scaled to ``‖ΔW‖_F``): the null level
  against which a method's tail shift is read. Spectra are computed in float64 (short fine-tuning moves singular
  values by ~1e-6 relative, near float32's resolution); singular vectors in float32.
* **Alignment** with the layer-input covariance ``C = XᵀX / N = Q diag(λ) Qᵀ`` (eigenvalues descending): the squared
  overlaps ``O[i, j] = (v_iᵀ q_j)²`` between right singular vectors and eigenvectors, summarised as the region matrix
  ``A[a, b] = mean_{i ∈ R_a} Σ_{j ∈ E_b} O[i, j]``: the share of a region-``a`` singular direction's unit energy that
  lies in eigen-region ``b`` of ``C`` (regions of ``C``'s ``d_in`` eigen-indices, again thirds). Rows sum to 1.
  ``A[a, head]`` — how much the singular directions of region ``a`` live in the dominant activation directions — is
  the summary compared before (``W0``) and after (``W``).
* **Intruder dimensions** (Shuttleworth et al., 2024): among the top ``k = 10`` singular vectors of ``W``, those
  whose largest ``|cos|`` with every singular vector of ``W0`` is below ``ε = 0.5``. **Decision:** left singular
  vectors (output space) by default, ``side="right"`` for the input side.
* **Block energy share**: ``Σ_k ‖W0[R_k, C_k]‖_F² / ‖W0‖_F²`` for SMoA's ``K`` aligned diagonal blocks under the
  spectral, identity or random order (the spectral order should concentrate more of ``W0``'s energy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smoa.adapter import functional as F

HIRA_RANK_TOL = 0.005
RELATIVE_RANK_TOL = 1e-3
REGIONS: tuple[str, ...] = ("head", "middle", "tail")
INTRUDER_TOP = 10
INTRUDER_THRESHOLD = 0.5
ORDERS: tuple[str, ...] = ("spectral", "identity", "random")


@dataclass(frozen=True)
class ThinSVD:
    """``W = u diag(s) vh`` with ``u (d_out, q)``, ``s (q,)`` descending, ``vh (q, d_in)``."""

    u: Tensor
    s: Tensor
    vh: Tensor

    @property
    def v(self) -> Tensor:
        """Right singular vectors as columns, ``(d_in, q)``."""
        return self.vh.T


def thin_svd(weight: Tensor, dtype: torch.dtype = torch.float32) -> ThinSVD:
    """Thin SVD of ``weight (d_out, d_in)`` in ``dtype`` (float32 by default; LAPACK is faster on tall matrices, so a
    wide matrix is decomposed through its transpose)."""
    w = weight.detach().to(dtype)
    if w.shape[0] < w.shape[1]:
        u_t, s, vh_t = torch.linalg.svd(w.T, full_matrices=False)
        return ThinSVD(vh_t.T, s, u_t.T)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return ThinSVD(u, s, vh)


def singular_values(weight: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``σ(weight)`` descending, ``(min(d_out, d_in),)``, computed in ``dtype``."""
    w = weight.detach().to(dtype)
    return torch.linalg.svdvals(w.T if w.shape[0] < w.shape[1] else w)


def numerical_rank(singular: Tensor, atol: float | None = HIRA_RANK_TOL, rtol: float | None = None) -> int:
    """``#{j : σ_j > tol}`` with ``tol = max(atol, rtol · σ_max)`` (either may be None); 0 for an all-zero spectrum.

    ``singular``: singular values ``(q,)`` of the update, any order.
    """
    if singular.numel() == 0:
        return 0
    top = float(singular.max())
    if top <= 0.0:
        return 0
    tol = max(atol if atol is not None else 0.0, rtol * top if rtol is not None else 0.0)
    return int((singular > tol).sum())


@dataclass(frozen=True)
class UpdateSize:
    """Rank and size of one update ``ΔW``."""

    rank: int  # σ_j > 0.005 (HiRA's count)
    relative_rank: int  # σ_j > 1e-3 · σ_max
    frobenius: float  # ‖ΔW‖_F
    top_singular: float  # σ_max(ΔW)


def update_size(delta: Tensor, atol: float = HIRA_RANK_TOL, rtol: float = RELATIVE_RANK_TOL) -> UpdateSize:
    """Numerical ranks (absolute and relative threshold), ``‖ΔW‖_F`` and ``σ_max`` of ``delta (d_out, d_in)``."""
    sv = singular_values(delta)
    return UpdateSize(
        rank=numerical_rank(sv, atol=atol),
        relative_rank=numerical_rank(sv, atol=None, rtol=rtol),
        frobenius=float(torch.linalg.vector_norm(delta.detach().double())),
        top_singular=float(sv.max()) if sv.numel() else 0.0,
    )


def region_slices(size: int, n_regions: int = len(REGIONS)) -> list[slice]:
    """Contiguous index ranges of ``0..size-1`` (``torch.tensor_split`` sizes): head, middle, tail for 3."""
    slices, start = [], 0
    for length in F.split_sizes(size, n_regions):
        slices.append(slice(start, start + length))
        start += length
    return slices


@dataclass(frozen=True)
class SpectrumShift:
    """Singular spectra of ``W0`` and ``W`` and their per-region relative change."""

    before: Tensor  # s0, (q,)
    after: Tensor  # s, (q,)
    ratio: Tensor  # s / s0 (NaN where s0 = 0)
    regions: dict[str, float]  # Σ_R s / Σ_R s0 − 1 per region


def spectrum_shift(before: Tensor, after: Tensor) -> SpectrumShift:
    """Compare singular values ``before`` (of ``W0``) and ``after`` (of ``W0 + ΔW``), both ``(q,)`` descending.

    Per index: ``ratio_j = s_j / s0_j``; per region ``R`` (thirds): ``Σ_{j∈R} s_j / Σ_{j∈R} s0_j − 1``.
    """
    if before.shape != after.shape:
        raise ValueError(f"spectra differ in length: before {tuple(before.shape)}, after {tuple(after.shape)}")
    s0, s1 = before.detach().double(), after.detach().double()
    ratio = torch.where(s0 > 0, s1 / s0.clamp_min(torch.finfo(torch.float64).tiny), torch.nan)
    regions = {}
    for name, part in zip(REGIONS, region_slices(s0.numel()), strict=True):
        mass = float(s0[part].sum())
        regions[name] = float(s1[part].sum()) / mass - 1.0 if mass > 0 else float("nan")
    return SpectrumShift(s0, s1, ratio, regions)


def random_update_like(delta: Tensor, seed: int = 0) -> Tensor:
    """An i.i.d. Gaussian matrix of ``delta``'s shape and dtype with the same Frobenius norm (zero if ``delta`` is)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(delta.shape, generator=generator, dtype=torch.float64)
    norm = float(torch.linalg.vector_norm(delta.detach().double()))
    return (noise * (norm / float(torch.linalg.vector_norm(noise)))).to(delta.dtype)


def covariance_eigenbasis(covariance: Tensor, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """``C = Q diag(λ) Qᵀ`` of a symmetric ``(d, d)`` covariance: ``(λ (d,), Q (d, d))`` with λ descending.

    ``dtype``: precision of the decomposition (float32 is several times faster and ample for overlaps).
    """
    c = covariance.detach().to(dtype)
    c = (c + c.T) / 2
    values, vectors = torch.linalg.eigh(c)
    return values.flip(0), vectors.flip(1)


def region_overlap(right_vectors: Tensor, eigenvectors: Tensor, n_regions: int = len(REGIONS)) -> Tensor:
    """``A[a, b] = mean_{i∈R_a} Σ_{j∈E_b} (v_iᵀ q_j)²``, ``(n_regions, n_regions)`` float64.

    Args:
        right_vectors: ``V (d_in, q)``, right singular vectors as columns in descending singular-value order.
        eigenvectors: ``Q (d_in, m)``, covariance eigenvectors as columns in descending eigenvalue order.
    """
    if right_vectors.shape[0] != eigenvectors.shape[0]:
        raise ValueError(
            f"singular vectors live in dimension {right_vectors.shape[0]} but the covariance eigenvectors in "
            f"{eigenvectors.shape[0]}; they must describe the same layer input"
        )
    overlap = (right_vectors.double().T @ eigenvectors.double()).square()  # (q, m)
    rows = region_slices(overlap.shape[0], n_regions)
    cols = region_slices(overlap.shape[1], n_regions)
    out = torch.empty(n_regions, n_regions, dtype=torch.float64)
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            out[a, b] = overlap[r, c].sum(dim=1).mean() if r.stop > r.start else torch.nan
    return out


def intruder_dimensions(
    base_vectors: Tensor, tuned_vectors: Tensor, top: int = INTRUDER_TOP, threshold: float = INTRUDER_THRESHOLD
) -> list[int]:
    """Indices ``i < top`` of tuned singular vectors with ``max_j |cos(tuned_i, base_j)| < threshold``.

    Args:
        base_vectors: ``(d, q0)`` singular vectors of ``W0`` as columns (all of them).
        tuned_vectors: ``(d, q)`` singular vectors of ``W`` as columns, descending singular values.
    """
    tuned = tuned_vectors[:, :top].double()
    base = base_vectors.double()
    cos = (tuned.T @ base) / (
        torch.linalg.vector_norm(tuned, dim=0).unsqueeze(1) * torch.linalg.vector_norm(base, dim=0).unsqueeze(0)
    )
    best = cos.abs().max(dim=1).values
    return [int(i) for i in torch.nonzero(best < threshold).flatten()]


def block_energy_share(weight: Tensor, row_order: Tensor, col_order: Tensor, num_blocks: int) -> float:
    """``Σ_k ‖W[R_k, C_k]‖_F² / ‖W‖_F²`` for the ``num_blocks`` aligned diagonal blocks of the given orders."""
    w = weight.detach().double()
    total = float(w.square().sum())
    if total == 0.0:
        return float("nan")
    rows_k = F.block_indices(row_order, num_blocks)
    cols_k = F.block_indices(col_order, num_blocks)
    inside = sum(float(F.block_anchor(w, r, c).square().sum()) for r, c in zip(rows_k, cols_k, strict=True))
    return inside / total


def block_energy_shares(weight: Tensor, num_blocks: int, seed: int = 0) -> dict[str, float]:
    """The block energy share of ``weight (d_out, d_in)`` under SMoA's spectral, identity and random orders."""
    shares = {}
    for order in ORDERS:
        row_order, col_order = F.block_orders(weight.detach().float(), order, seed)
        shares[order] = block_energy_share(weight, row_order, col_order, num_blocks)
    return shares
