"""The kernels' CPU scratch memory: reused between calls, never aliased by results, separate per mode and thread."""

from __future__ import annotations

import threading

import pytest
import torch

from smoa.adapter import functional as F
from smoa.adapter import scratch
from smoa.adapter.autograd import blockwise_delta_output, fused_linear


def _problem(seed=0, shape=(24, 20), ranks=(3, 2)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    row_order, col_order = F.block_orders(w, "random", seed=seed)
    a = [torch.randn(r, c, generator=g) for r, c in zip(ranks, F.split_sizes(shape[1], len(ranks)), strict=True)]
    b = [torch.randn(n, r, generator=g) for n, r in zip(F.split_sizes(shape[0], len(ranks)), ranks, strict=True)]
    return w, row_order, col_order, a, b


def test_buffer_is_reused_and_grows():
    scratch.release_scratch()
    first = scratch.Scratch([(4, 5)], torch.float32, torch.device("cpu")).take(4, 5)
    again = scratch.Scratch([(2, 3)], torch.float32, torch.device("cpu")).take(2, 3)
    assert again.data_ptr() == first.data_ptr()
    bigger = scratch.Scratch([(40, 50)], torch.float32, torch.device("cpu")).take(40, 50)
    assert bigger.numel() == 2000
    views = scratch.Scratch([(3, 4), (5,)], torch.float64, torch.device("cpu"))
    one, two = views.take(3, 4), views.take(5)
    assert two.data_ptr() == one.data_ptr() + 12 * 8  # consecutive, not overlapping
    scratch.release_scratch()


def test_results_do_not_alias_scratch_across_calls():
    w, row_order, col_order, a, b = _problem()
    x = torch.randn(6, w.shape[1])
    first = fused_linear(x, w, None, row_order, col_order, a, b, 0.5)
    kept = first.clone()
    other_w, other_rows, other_cols, other_a, other_b = _problem(seed=1)
    fused_linear(torch.randn(6, w.shape[1]), other_w, None, other_rows, other_cols, other_a, other_b, 2.0)
    blockwise_delta_output(torch.randn(6, w.shape[1]), other_w, other_rows, other_cols, other_a, other_b, 2.0)
    assert torch.equal(first, kept)


def test_inference_mode_and_threads_get_their_own_buffers():
    w, row_order, col_order, a, b = _problem()
    x = torch.randn(5, w.shape[1])
    want = fused_linear(x, w, None, row_order, col_order, a, b, 0.5)
    with torch.inference_mode():
        inferred = fused_linear(x, w, None, row_order, col_order, a, b, 0.5)
    # a normal-mode call after an inference-mode one must not write into an inference tensor
    xs = x.clone().requires_grad_()
    out = fused_linear(xs, w, None, row_order, col_order, a, b, 0.5)
    out.sum().backward()
    torch.testing.assert_close(inferred, want)
    results = {}

    def worker(name):
        results[name] = fused_linear(x, w, None, row_order, col_order, a, b, 0.5)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for value in results.values():
        torch.testing.assert_close(value, want)


def test_into_of_the_wrong_shape_is_refused_with_the_expected_shape():
    w, row_order, col_order, a, b = _problem()
    x = torch.randn(6, w.shape[1])
    with pytest.raises(ValueError, match=r"`into` must be a contiguous tensor of shape \(6, 24\)"):
        blockwise_delta_output(x, w, row_order, col_order, a, b, 0.5, into=torch.zeros(6, 23))
    with pytest.raises(ValueError, match="contiguous=False"):
        blockwise_delta_output(x, w, row_order, col_order, a, b, 0.5, into=torch.zeros(24, 6).T)
    into = torch.randn(6, 24)
    want = into + blockwise_delta_output(x, w, row_order, col_order, a, b, 0.5)
    got = blockwise_delta_output(x, w, row_order, col_order, a, b, 0.5, into=into)
    assert got is into
    torch.testing.assert_close(got, want)
