"""Known-answer tests of the pure spectral measures."""

from __future__ import annotations

import math

import pytest
import torch

from smoa.analysis import spectral as S


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_rank_five_update_has_rank_five() -> None:
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(40, 5, generator=g) @ torch.randn(5, 30, generator=g)
    size = S.update_size(delta)
    assert (size.rank, size.relative_rank) == (5, 5)
    assert size.frobenius == pytest.approx(float(delta.double().norm()), rel=1e-6)


def test_zero_update_has_rank_zero_and_no_shift() -> None:
    w0 = torch.randn(24, 36, generator=torch.Generator().manual_seed(1))
    size = S.update_size(torch.zeros_like(w0))
    assert (size.rank, size.relative_rank, size.frobenius) == (0, 0, 0.0)
    s0 = S.singular_values(w0)
    shift = S.spectrum_shift(s0, S.singular_values(w0.clone()))
    assert shift.regions == {"head": 0.0, "middle": 0.0, "tail": 0.0}
    assert torch.equal(shift.ratio, torch.ones_like(shift.ratio))
    svd = S.thin_svd(w0)
    assert S.intruder_dimensions(svd.u, svd.u) == []


def test_numerical_rank_thresholds() -> None:
    sv = torch.tensor([1.0, 0.01, 0.004, 0.0])
    assert S.numerical_rank(sv) == 2  # > 0.005
    assert S.numerical_rank(sv, atol=None, rtol=1e-3) == 3  # > 0.001
    assert S.numerical_rank(torch.tensor([2e-3, 1e-3]), atol=S.HIRA_RANK_TOL) == 0
    assert S.numerical_rank(torch.tensor([2e-3, 1e-6]), atol=None, rtol=1e-3) == 1


def test_regions_are_thirds_with_tensor_split_sizes() -> None:
    assert [(s.start, s.stop) for s in S.region_slices(10)] == [(0, 4), (4, 7), (7, 10)]


def test_spectrum_shift_by_region() -> None:
    before = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 0.5])
    after = torch.tensor([4.0, 3.0, 2.0, 1.5, 1.0, 1.0])
    shift = S.spectrum_shift(before, after)
    assert shift.regions["head"] == 0.0
    assert shift.regions["middle"] == pytest.approx(0.5 / 3.0)
    assert shift.regions["tail"] == pytest.approx(0.5 / 1.5)
    assert shift.ratio[-1] == pytest.approx(2.0)


def test_thin_svd_of_wide_and_tall_matrices_reconstructs() -> None:
    for shape in ((7, 13), (13, 7)):
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        svd = S.thin_svd(w)
        assert svd.u.shape == (shape[0], 7) and svd.vh.shape == (7, shape[1])
        torch.testing.assert_close(svd.u @ torch.diag(svd.s) @ svd.vh, w, atol=1e-5, rtol=1e-5)


def test_block_energy_by_hand() -> None:
    w = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    identity = torch.arange(4)
    # blocks {0,1}x{0,1}: 0,1,4,5 -> 42; {2,3}x{2,3}: 10,11,14,15 -> 642; total sum k^2 = 1240
    assert S.block_energy_share(w, identity, identity, 2) == pytest.approx(684 / 1240)
    swapped = torch.tensor([2, 3, 0, 1])
    # rows {0,1} with cols {2,3}: 2,3,6,7 -> 98; rows {2,3} with cols {0,1}: 8,9,12,13 -> 458
    assert S.block_energy_share(w, identity, swapped, 2) == pytest.approx(556 / 1240)


def test_spectral_order_recovers_hidden_blocks() -> None:
    # a scrambled block-diagonal matrix whose first block holds all the large singular values
    d = 6
    block = torch.zeros(d, d, dtype=torch.float64)
    block[:3, :3] = 10 * orthogonal(3, 0)
    block[3:, 3:] = orthogonal(3, 1)
    rows, cols = torch.tensor([4, 0, 5, 2, 1, 3]), torch.tensor([1, 5, 3, 0, 4, 2])
    w = torch.empty_like(block)
    w[rows.unsqueeze(1), cols.unsqueeze(0)] = block
    shares = S.block_energy_shares(w, 2)
    assert shares["spectral"] == pytest.approx(1.0)
    assert shares["identity"] < 0.99
    assert set(shares) == {"spectral", "identity", "random"}


def test_intruder_detected_for_a_direction_far_from_all_base_vectors() -> None:
    d = 8
    u0, v0 = orthogonal(d, 3), orthogonal(d, 4)
    w0 = u0 @ torch.diag(torch.linspace(5, 1, d, dtype=torch.float64)) @ v0.T
    x = u0 @ torch.ones(d, dtype=torch.float64) / math.sqrt(d)  # |cos| = 1/sqrt(8) with every base vector
    tuned = S.thin_svd(w0 + 100 * torch.outer(x, v0[:, 0]), torch.float64)
    base = S.thin_svd(w0, torch.float64)
    assert S.intruder_dimensions(base.u, tuned.u) == [0]
    # a change along an existing direction only rescales it: no intruder
    same = S.thin_svd(w0 + 3 * torch.outer(u0[:, 2], v0[:, 2]), torch.float64)
    assert S.intruder_dimensions(base.u, same.u) == []


def test_alignment_on_a_constructed_covariance() -> None:
    d = 6
    q = orthogonal(d, 5)
    covariance = q @ torch.diag(torch.tensor([6.0, 5, 4, 3, 2, 1], dtype=torch.float64)) @ q.T
    values, vectors = S.covariance_eigenbasis(covariance)
    assert torch.all(values[:-1] > values[1:])
    m = orthogonal(d, 6)
    s = torch.diag(torch.tensor([6.0, 5, 4, 3, 2, 1], dtype=torch.float64))
    aligned = m @ s @ q.T  # right singular vector i = eigenvector i
    reversed_ = m @ s @ q.flip(1).T  # right singular vector i = eigenvector d-1-i
    a = S.region_overlap(S.thin_svd(aligned, torch.float64).v, vectors)
    b = S.region_overlap(S.thin_svd(reversed_, torch.float64).v, vectors)
    torch.testing.assert_close(a, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(b, torch.eye(3, dtype=torch.float64).flip(1), atol=1e-10, rtol=0)
    r = S.region_overlap(orthogonal(d, 7)[:, :4], vectors)
    torch.testing.assert_close(r.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_alignment_dimension_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="same layer input"):
        S.region_overlap(torch.eye(4), torch.eye(5))


def test_random_update_like_matches_the_norm_and_lifts_the_tail() -> None:
    g = torch.Generator().manual_seed(8)
    delta = torch.randn(30, 20, generator=g, dtype=torch.float64) * 0.01
    noise = S.random_update_like(delta, seed=1)
    assert float(noise.norm()) == pytest.approx(float(delta.norm()))
    assert torch.equal(S.random_update_like(torch.zeros(3, 4)), torch.zeros(3, 4))
    w0 = orthogonal(30, 9)[:, :20] @ torch.diag(torch.logspace(0, -3, 20, dtype=torch.float64))
    shift = S.spectrum_shift(S.singular_values(w0, torch.float64), S.singular_values(w0 + noise, torch.float64))
    assert shift.regions["tail"] > shift.regions["head"] > -1e-3
