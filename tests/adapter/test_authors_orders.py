"""The block orders agree with the authors' arithmetic on every projection matrix of the real SmolLM2 weights."""

from __future__ import annotations

import pytest
import torch

from smoa.adapter.functional import block_orders, spectral_scores


def authors_scores(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The score of the authors' code (misonsky/SMoA): energy ``E = U² s²`` (rows; ``V² s²`` for columns), numerator
    ``(E * j).sum(1)`` with float32 indices j, over ``E.sum(1).clamp_min(eps)``; written here independently."""
    w = weight.detach().to(torch.float32)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    out = []
    for vectors in (u, vh.transpose(0, 1)):
        ids = torch.arange(vectors.shape[1], dtype=vectors.dtype)
        energy = vectors.pow(2) * s.to(vectors.dtype).unsqueeze(0).pow(2)
        denominator = energy.sum(dim=1).clamp_min(torch.finfo(energy.dtype).eps)
        out.append((energy * ids.unsqueeze(0)).sum(dim=1) / denominator)
    return out[0], out[1]


@pytest.mark.slow
def test_scores_and_orders_equal_the_authors_on_smollm2():
    from smoa.models import load_model_and_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both sides then run the same LAPACK path; on shared cores one thread is also faster
    try:
        check_every_matrix(load_model_and_tokenizer("default", device="cpu")[0])
    finally:
        torch.set_num_threads(threads)


def check_every_matrix(model) -> None:
    weights = {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1].endswith("_proj")
    }
    assert len(weights) == 210
    tied = 0
    for name, weight in weights.items():
        ours, theirs = spectral_scores(weight), authors_scores(weight)
        for mine, reference in zip(ours, theirs, strict=True):
            assert torch.equal(mine, reference), name  # bit for bit, not merely close
        rows, cols = block_orders(weight)
        assert torch.equal(rows, torch.argsort(theirs[0], stable=True)), name
        assert torch.equal(cols, torch.argsort(theirs[1], stable=True)), name
        # exact float32 ties are broken by position here, where the authors' default argsort leaves them unspecified
        tied += any(len(torch.unique(score)) < len(score) for score in theirs)
    assert tied < len(weights)
