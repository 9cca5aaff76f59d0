"""The base-weight fingerprint a saved SMoA adapter carries (:mod:`smoa.adapter.checkpoint`)."""

from __future__ import annotations

import math

import torch

from smoa.adapter.checkpoint import fingerprints_match, weight_fingerprint


def test_fingerprint_tolerates_rounding_and_refuses_other_weights():
    g = torch.Generator().manual_seed(12)
    w = torch.randn(64, 48, generator=g) * 0.02
    fp = weight_fingerprint(w)
    assert fp.shape == (9,) and fp.dtype == torch.float64
    assert fingerprints_match(fp, weight_fingerprint(w.to(torch.bfloat16)))
    assert fingerprints_match(fp, weight_fingerprint(w.to(torch.float16)))
    other = torch.randn(64, 48, generator=g) * 0.02
    assert not fingerprints_match(fp, weight_fingerprint(other))
    shuffled = w[torch.randperm(64, generator=g)]
    assert not fingerprints_match(fp, weight_fingerprint(shuffled))
    assert math.isclose(float(fp[0]), float(w.double().norm()), rel_tol=1e-12)
