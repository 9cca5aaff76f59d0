"""The SMoA formula against an obvious reference written here, and the theory that follows from it."""

from __future__ import annotations

import pytest
import torch

from smoa.adapter import functional as F
from smoa.adapter.autograd import blockwise_delta_output, fused_linear


def reference_scores(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores by explicit loops over coordinates and spectral indices."""
    eps = torch.finfo(torch.float32).eps

    def score(vectors: torch.Tensor) -> torch.Tensor:
        out = torch.empty(vectors.shape[0], dtype=torch.float64)
        for i in range(vectors.shape[0]):
            num = sum(j * float(vectors[i, j]) ** 2 * float(s[j]) ** 2 for j in range(len(s)))
            den = sum(float(vectors[i, j]) ** 2 * float(s[j]) ** 2 for j in range(len(s)))
            out[i] = num / max(den, eps)
        return out

    return score(u), score(v)


def reference_delta(weight, row_order, col_order, a, b, scaling):
    """ΔW = P_outᵀ blockdiag(ΔM_1..ΔM_K) P_in with explicit permutation matrices and a dense block-diagonal matrix."""
    d_out, d_in = weight.shape
    p_out = torch.zeros(d_out, d_out, dtype=torch.float64)
    p_out[torch.arange(d_out), row_order] = 1.0  # (P_out W)[i] = W[row_order[i]]
    p_in = torch.zeros(d_in, d_in, dtype=torch.float64)
    p_in[torch.arange(d_in), col_order] = 1.0
    permuted = p_out @ weight.double() @ p_in.T
    blocks = torch.zeros(d_out, d_in, dtype=torch.float64)
    r0 = c0 = 0
    for a_k, b_k in zip(a, b, strict=True):
        n, c = b_k.shape[0], a_k.shape[1]
        anchor = permuted[r0 : r0 + n, c0 : c0 + c]
        blocks[r0 : r0 + n, c0 : c0 + c] = scaling * (b_k.double() @ a_k.double()) * anchor
        r0, c0 = r0 + n, c0 + c
    return p_out.T @ blocks @ p_in


def random_factors(d_out, d_in, ranks, generator=None, dtype=torch.float32):
    k = len(ranks)
    rows, cols = F.split_sizes(d_out, k), F.split_sizes(d_in, k)
    a = [torch.randn(r, c, generator=generator, dtype=dtype) for r, c in zip(ranks, cols, strict=True)]
    b = [torch.randn(n, r, generator=generator, dtype=dtype) for n, r in zip(rows, ranks, strict=True)]
    return a, b


def test_split_sizes_follow_tensor_split():
    for size in (7, 8, 13, 576, 1536):
        for k in (1, 2, 3, 4, 7):
            expected = [len(chunk) for chunk in torch.tensor_split(torch.arange(size), k)]
            assert F.split_sizes(size, k) == expected
    assert F.block_ranks(32, 2) == [16, 16]
    assert F.block_ranks(7, 3) == [3, 2, 2]
    assert F.block_ranks(7, 2, [5, 2]) == [5, 2]


@pytest.mark.parametrize("shape", [(9, 6), (6, 9), (8, 8)])
def test_spectral_scores_match_loop_reference(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    ref_row, ref_col = reference_scores(u, s, vh.T)
    row, col = F.spectral_scores(w)
    torch.testing.assert_close(row.double(), ref_row, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(col.double(), ref_col, rtol=1e-5, atol=1e-5)


def test_scores_are_invariant_to_svd_sign_flips():
    torch.manual_seed(1)
    w = torch.randn(12, 10)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    signs = torch.tensor([(-1.0) ** j for j in range(len(s))])
    u_flipped, v_flipped = u * signs, vh.T * signs
    torch.testing.assert_close(u_flipped @ torch.diag(s) @ v_flipped.T, w, rtol=1e-5, atol=1e-5)
    for plain, flipped in zip(reference_scores(u, s, vh.T), reference_scores(u_flipped, s, v_flipped), strict=True):
        torch.testing.assert_close(plain, flipped)
    # and the library's scores of -W (every singular pair flipped) equal those of W
    for ours, theirs in zip(F.spectral_scores(w), F.spectral_scores(-w), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_spectral_order_puts_leading_energy_first():
    # rows 0..2 live in the top singular direction, rows 3..5 in the last one
    u = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(2)))[0]
    w = torch.zeros(6, 6)
    w[3:, :] = 0.01 * u[3:, :]
    w[:3, :] = 10.0 * u[:3, :]
    row_order, _ = F.block_orders(w, "spectral")
    assert set(row_order[:3].tolist()) == {0, 1, 2}


def test_orders_are_permutations_and_seeded():
    w = torch.randn(11, 7)
    for permutation in ("spectral", "identity", "random"):
        row, col = F.block_orders(w, permutation, seed=3)
        assert sorted(row.tolist()) == list(range(11)) and sorted(col.tolist()) == list(range(7))
        assert row.dtype == torch.long
    assert torch.equal(F.block_orders(w, "identity")[0], torch.arange(11))
    r1, c1 = F.block_orders(w, "random", seed=3)
    r2, c2 = F.block_orders(w, "random", seed=3)
    r3, _ = F.block_orders(w, "random", seed=4)
    assert torch.equal(r1, r2) and torch.equal(c1, c2) and not torch.equal(r1, r3)
    with pytest.raises(ValueError, match="permutation='sorted'"):
        F.block_orders(w, "sorted")


@pytest.mark.parametrize(
    "shape,ranks", [((10, 8), [2, 2]), ((11, 7), [3, 1, 2]), ((6, 9), [1]), ((12, 12), [1, 1, 1, 1])]
)
def test_delta_weight_matches_permutation_matrix_reference(shape, ranks):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(*shape, generator=g)
    row_order, col_order = F.block_orders(w, "spectral")
    a, b = random_factors(*shape, ranks, g)
    scaling = 0.7
    expected = reference_delta(w, row_order, col_order, a, b, scaling)
    got = F.delta_weight(w, row_order, col_order, a, b, scaling)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 4, shape[1], generator=g)
    out = F.delta_output(x, w, row_order, col_order, a, b, scaling)
    torch.testing.assert_close(out.double(), x.double() @ expected.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,ranks", [((12, 10), [3, 2]), ((13, 9), [2, 2, 1]), ((9, 14), [1, 3])])
def test_scattered_factors_give_delta_as_hadamard_with_w0(shape, ranks):
    g = torch.Generator().manual_seed(11)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    row_order, col_order = F.block_orders(w, "random", seed=3)
    a, b = random_factors(*shape, ranks, g, dtype=torch.float64)
    b_full, a_full = F.scattered_factors(row_order, col_order, a, b, 0.6)
    assert b_full.shape == (shape[0], sum(ranks)) and a_full.shape == (sum(ranks), shape[1])
    torch.testing.assert_close(w * (b_full @ a_full), reference_delta(w, row_order, col_order, a, b, 0.6))
    # off the diagonal blocks the product is exactly zero
    rows_k, cols_k = F.block_indices(row_order, len(ranks)), F.block_indices(col_order, len(ranks))
    mask = torch.zeros(shape, dtype=torch.bool)
    for rows, cols in zip(rows_k, cols_k, strict=True):
        mask[rows.unsqueeze(1), cols.unsqueeze(0)] = True
    assert ((b_full @ a_full)[~mask] == 0).all()


@pytest.mark.parametrize("shape,ranks", [((6, 5), [2, 1]), ((7, 9), [1, 2, 1]), ((8, 8), [2, 2])])
def test_fused_autograd_passes_gradcheck(shape, ranks):
    g = torch.Generator().manual_seed(12)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    bias = torch.randn(shape[0], generator=g, dtype=torch.float64, requires_grad=True)
    row_order, col_order = F.block_orders(w, "random", seed=2)
    a, b = random_factors(*shape, ranks, g, dtype=torch.float64)
    x = torch.randn(2, 3, shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in (*a, *b)]
    k = len(ranks)

    def fn(x, bias, *factors):
        return fused_linear(x, w, bias, row_order, col_order, list(factors[:k]), list(factors[k:]), 0.5)

    assert torch.autograd.gradcheck(fn, (x, bias, *params), eps=1e-6, atol=1e-6)
    want = x @ (w + reference_delta(w, row_order, col_order, a, b, 0.5)).T + bias
    torch.testing.assert_close(fn(x, bias, *params), want)


@pytest.mark.parametrize("shape,ranks", [((6, 5), [2, 1]), ((7, 9), [1, 2, 1]), ((8, 8), [2, 2])])
def test_blockwise_autograd_passes_gradcheck(shape, ranks):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    row_order, col_order = F.block_orders(w, "random", seed=1)
    a, b = random_factors(*shape, ranks, g, dtype=torch.float64)
    x = torch.randn(3, shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in (*a, *b)]
    k = len(ranks)

    def fn(x, *factors):
        return blockwise_delta_output(x, w, row_order, col_order, list(factors[:k]), list(factors[k:]), 0.5)

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,ranks", [((12, 10), [3, 3]), ((13, 9), [2, 2, 1]), ((16, 16), [1, 1, 1, 1])])
def test_blockwise_autograd_equals_plain_autograd(shape, ranks):
    g = torch.Generator().manual_seed(8)
    w = torch.randn(*shape, generator=g)
    row_order, col_order = F.block_orders(w, "spectral")
    a, b = random_factors(*shape, ranks, g)
    x = torch.randn(2, 5, shape[1], generator=g)
    upstream = torch.randn(2, 5, shape[0], generator=g)

    def run(fn):
        xs = x.clone().requires_grad_()
        fa = [t.clone().requires_grad_() for t in a]
        fb = [t.clone().requires_grad_() for t in b]
        out = fn(xs, w, row_order, col_order, fa, fb, 1.3)
        out.backward(upstream)
        return out, xs.grad, [t.grad for t in fa], [t.grad for t in fb]

    fast, slow = run(blockwise_delta_output), run(F.delta_output)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-6)
    for got, want in zip(fast[2] + fast[3], slow[2] + slow[3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rank_of_update_reaches_block_ceiling_far_above_r():
    g = torch.Generator().manual_seed(9)
    d_out, d_in, ranks = 48, 40, [2, 2]
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    row_order, col_order = F.block_orders(w, "spectral")
    a, b = random_factors(d_out, d_in, ranks, g, dtype=torch.float64)
    delta = F.delta_weight(w, row_order, col_order, a, b, 1.0)
    ceiling = F.rank_ceiling(d_out, d_in, ranks)
    assert ceiling == 40
    assert int(torch.linalg.matrix_rank(delta)) == ceiling > sum(ranks)


def test_rank_ceiling_counts_rank_limited_anchors():
    # a block of rank-1 factors on a rank-limited anchor: bound r_k·rank(M_k), here min(1·n, n, c)
    assert F.rank_ceiling(8, 6, [1, 1]) == 6  # blocks 4x3 and 4x3
    assert F.rank_ceiling(5, 5, [1]) == 5
    assert F.rank_ceiling(7, 5, [1, 2]) == 3 + 2  # blocks 4x3 and 3x2
    assert F.rank_ceiling(7, 5, [1, 0]) == 3  # a block without rank adds nothing


def test_block_aligned_target_is_exact_for_smoa_but_not_for_lora_at_equal_budget():
    g = torch.Generator().manual_seed(10)
    d, ranks = 32, [3, 3]
    w = torch.randn(d, d, generator=g, dtype=torch.float64)
    row_order, col_order = F.block_orders(w, "spectral")
    # target: T_k of rank r_k, ΔW* = P_outᵀ blockdiag(T_k ⊙ M_k) P_in
    t_a, t_b = random_factors(d, d, ranks, g, dtype=torch.float64)
    target = F.delta_weight(w, row_order, col_order, t_a, t_b, 1.0)
    # SMoA represents it exactly: factor each T_k (any rank-r_k factorisation), scaling 2 absorbed in B
    fit_a, fit_b = [], []
    for a_k, b_k in zip(t_a, t_b, strict=True):
        u, s, vh = torch.linalg.svd(b_k @ a_k)
        r = a_k.shape[0]
        fit_b.append(u[:, :r] * s[:r] / 2.0)
        fit_a.append(vh[:r])
    smoa_fit = F.delta_weight(w, row_order, col_order, fit_a, fit_b, 2.0)
    assert float((smoa_fit - target).norm() / target.norm()) < 1e-10
    # LoRA with the same number of parameters has rank r_lora; its best error is the Eckart–Young tail
    smoa_params = F.trainable_parameters(d, d, ranks)
    r_lora = smoa_params // (2 * d)
    singular = torch.linalg.svdvals(target)
    tail = float(singular[r_lora:].square().sum().sqrt() / target.norm())
    assert r_lora == 3 and tail > 0.5


def test_gradient_fit_of_block_aligned_target_reaches_near_zero():
    g = torch.Generator().manual_seed(11)
    d, ranks = 16, [2, 2]
    w = torch.randn(d, d, generator=g)
    row_order, col_order = F.block_orders(w, "spectral")
    t_a, t_b = random_factors(d, d, ranks, g)
    target = F.delta_weight(w, row_order, col_order, t_a, t_b, 1.0)
    a = [(0.3 * torch.randn(t.shape, generator=g)).requires_grad_() for t in t_a]
    b = [(0.3 * torch.randn(t.shape, generator=g)).requires_grad_() for t in t_b]
    opt = torch.optim.Adam([*a, *b], lr=0.03)
    for _ in range(1500):
        opt.zero_grad()
        loss = (F.delta_weight(w, row_order, col_order, a, b, 1.0) - target).square().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rel = float((F.delta_weight(w, row_order, col_order, a, b, 1.0) - target).norm() / target.norm())
    assert rel < 1e-2


def test_trainable_parameter_formula():
    assert F.trainable_parameters(576, 576, [16, 16]) == 16 * (288 + 288) * 2
    assert F.trainable_parameters(1536, 576, [16, 16]) == 32 * (1536 + 576) // 2
    assert F.trainable_parameters(7, 5, [2, 1]) == 2 * (4 + 3) + 1 * (3 + 2)
