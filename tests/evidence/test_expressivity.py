"""Expressivity fits: the SVD optimum, the error measures, and an Adam fit that restores the model."""

from __future__ import annotations

import pytest
import torch

from smoa.evidence.expressivity import (
    effective_delta,
    effective_rank,
    errors,
    fit_method,
    make_target,
    truncated_svd,
)
from tests.tiny import tiny_llama


def test_truncated_svd_recovers_a_low_rank_target_and_is_optimal():
    torch.manual_seed(0)
    low = torch.randn(12, 3) @ torch.randn(3, 10)
    torch.testing.assert_close(truncated_svd(low, 3), low, rtol=1e-5, atol=1e-5)
    dense = torch.randn(12, 10)
    best = (dense - truncated_svd(dense, 2)).norm()
    other = torch.randn(12, 2) @ torch.randn(2, 10)
    assert best <= (dense - other).norm()


def test_error_measures_and_effective_rank():
    target = torch.eye(6)
    inputs = torch.randn(6, 20)
    assert errors(target, target, inputs)["frobenius_error"] == 0.0
    result = errors(torch.zeros(6, 6), target, inputs)
    assert result["frobenius_error"] == pytest.approx(1.0) and result["activation_error"] == pytest.approx(1.0)
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert effective_rank(torch.ones(4, 4)) == pytest.approx(1.0)


def test_targets_are_scaled_and_named():
    weight = torch.randn(8, 6)
    for kind in ("gaussian", "rank8", "w0_hadamard"):
        assert make_target(kind, weight, None, 0).norm() == pytest.approx(0.1 * weight.norm(), rel=1e-5)
    with pytest.raises(ValueError, match="needs a fine-tuning update"):
        make_target("real", weight, None, 0)


@pytest.mark.parametrize("method", ["smoa", "hira", "mora", "melora"])
def test_adam_fit_lowers_the_error_and_leaves_the_model_as_it_was(method):
    model = tiny_llama(seed=0, hidden_size=32, intermediate_size=64)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name = "model.layers.1.mlp.up_proj"
    weight = model.get_submodule(name).weight
    target = make_target("w0_hadamard", weight, None, 0)
    delta, trainable, curve = fit_method(model, name, method, 2 * sum(weight.shape), target, 1e-2, steps=60)
    assert delta.shape == target.shape and trainable > 0
    assert curve[-1] < curve[0]
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("method", ["smoa", "hira", "mora", "melora"])
def test_the_fitted_update_is_what_the_merged_layer_adds(method):
    """Against the obvious reference: merge the adapter and subtract the base weight."""
    import re

    from peft import get_peft_model

    import smoa  # noqa: F401
    from smoa.evidence.expressivity import FITTED
    from smoa.methods import plan_method

    model = tiny_llama(seed=0, hidden_size=32, intermediate_size=64)
    name = "model.layers.1.mlp.up_proj"
    w0 = model.get_submodule(name).weight.detach().clone()
    plan = plan_method(method, model, "matched", 2 * sum(w0.shape), re.escape(name), **FITTED[method][0])
    peft_model = get_peft_model(model, plan.peft_config())
    layer = peft_model.get_submodule("base_model.model." + name)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in layer.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.3)  # away from the zero initialisation
    delta = effective_delta(layer).detach()
    layer.merge()
    torch.testing.assert_close(delta, layer.get_base_layer().weight.detach() - w0, rtol=1e-4, atol=1e-5)
    if method == "hira":  # W0 ⊙ BA: far above the branch rank, not the BA that get_delta_weight returns
        assert torch.linalg.matrix_rank(delta) > plan.peft_config().r
