"""MoRA types 1 and 6 against loop references of the authors' formulas, and counts (the behaviour checks every
method passes are rows of tests/baselines/test_battery.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from smoa.baselines import MoRAConfig
from smoa.baselines.mora import mora_delta_weight, mora_output, mora_rank
from tests.baselines.conftest import adapted, tiny_mlp

TYPE6 = MoRAConfig(r=2, mora_type=6, target_modules=["lin0", "lin1"])
TYPE1 = MoRAConfig(r=2, mora_type=1, target_modules=["lin0", "lin1"])


def reference_type1(M: torch.Tensor, d_in: int, d_out: int) -> torch.Tensor:
    """Authors' type 1: w[:, i mod d_in] += M[:, i mod r̂] for i < d_in + pad, then rows tiled to d_out."""
    r = M.shape[0]
    pad = (r - d_in % r) % r
    w = torch.zeros(r, d_in)
    for i in range(d_in + pad):
        w[:, i % d_in] += M[:, i % r]
    repeats = math.ceil(d_out / r)
    return torch.cat([w] * repeats, dim=0)[:d_out]


def reference_type6(M: torch.Tensor, d_in: int, d_out: int) -> torch.Tensor:
    """Type 6 written entry by entry: chunk b of the padded input is rotated by 2×2 rotations of angle b·θ_j on the
    coordinate pairs (j, j + r̂/2), multiplied by M, the outputs concatenated then cut or tiled to d_out."""
    r = M.shape[0]
    half = r // 2
    chunks = math.ceil(d_in / r)
    padded = chunks * r
    full = torch.zeros(padded, padded)
    for b in range(chunks):
        rotation = torch.zeros(r, r)
        for j in range(half):
            angle = b * 10000 ** (-2 * j / r)
            c, s = math.cos(angle), math.sin(angle)
            rotation[j, j], rotation[j, j + half] = c, -s
            rotation[j + half, j + half], rotation[j + half, j] = c, s
        full[b * r : (b + 1) * r, b * r : (b + 1) * r] = M @ rotation
    delta = torch.zeros(padded, d_in)
    for p in range(padded):  # padded input coordinate p reads x[p mod d_in]
        delta[:, p % d_in] += full[:, p]
    rows = [delta[o % padded] for o in range(d_out)]
    return torch.stack(rows)


@pytest.mark.parametrize(("d_in", "d_out", "r_hat"), [(24, 40, 14), (40, 16, 10), (16, 16, 8), (10, 30, 12)])
@pytest.mark.parametrize("mora_type", [1, 6])
def test_delta_and_output_match_reference(d_in: int, d_out: int, r_hat: int, mora_type: int) -> None:
    torch.manual_seed(0)
    M = torch.randn(r_hat, r_hat, dtype=torch.float64)
    reference = (reference_type1 if mora_type == 1 else reference_type6)(M.float(), d_in, d_out).double()
    torch.testing.assert_close(mora_delta_weight(M, d_in, d_out, mora_type), reference, atol=1e-5, rtol=1e-5)
    x = torch.randn(3, 4, d_in, dtype=torch.float64)
    torch.testing.assert_close(mora_output(x, M, d_out, mora_type), x @ reference.T, atol=1e-4, rtol=1e-5)


def test_layer_update_matches_reference() -> None:
    model = adapted(tiny_mlp, replace(TYPE6, init_lora_weights=False))
    layer = model.base_model.model.lin0
    M = layer.mora_M["default"].detach()
    x = torch.randn(5, 24)
    with torch.no_grad():
        delta_out = layer(x) - layer.base_layer(x)
    torch.testing.assert_close(delta_out, x @ reference_type6(M, 24, 40).T, atol=1e-5, rtol=1e-5)


def test_rank_side_and_count() -> None:
    # r̂ = ⌊√((d_in + d_out) r) + ½⌋, even for type 6 (Llama-2-7B q_proj at r = 32: exactly 512)
    assert mora_rank(4096, 4096, 32, 6) == 512
    assert mora_rank(4096, 11008, 32, 1) == 695 and mora_rank(4096, 11008, 32, 6) == 694
    assert mora_rank(24, 40, 2, 1) == 11 and mora_rank(24, 40, 2, 6) == 10
    for config in (TYPE6, TYPE1):
        model = adapted(tiny_mlp, config)
        sides = [mora_rank(24, 40, 2, config.mora_type), mora_rank(40, 16, 2, config.mora_type)]
        assert model.get_nb_trainable_parameters()[0] == sum(s * s for s in sides)
        assert torch.count_nonzero(model.base_model.model.lin0.mora_M["default"]) == 0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mora_type must be one of"):
        MoRAConfig(mora_type=3)
