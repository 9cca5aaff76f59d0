"""SSMLoRA: the recurrence against a plain reference, counts, and no merging (the behaviour checks every method
passes are rows of tests/baselines/test_battery.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from smoa.baselines import NotMergeableError, SSMLoRAConfig
from smoa.baselines.ssmlora import align_state
from tests.baselines.conftest import adapted, tiny_mlp

MLP_CONFIG = SSMLoRAConfig(r=4, lora_alpha=2.0, lora_dropout=0.0, target_modules=["lin0", "lin1"])


def test_recurrence_matches_reference() -> None:
    """Three calls: h₀ = 0; u = x W_a; h' = h W_c + u W_d + h; ĥ = minmax(h'); y = W0 x + α (u + LeakyReLU(ĥ)) W_b."""
    config = replace(MLP_CONFIG, init_lora_weights=False, target_modules=["lin0"])
    layer = adapted(tiny_mlp, config).base_model.model.lin0
    Wa, Wb, Wc, Wd = (getattr(layer, f"ssmlora_{k}")["default"].detach() for k in "ABCD")
    alpha = config.lora_alpha
    h = torch.zeros(3, 5, 4)
    for step in range(3):
        x = torch.randn(3, 5, 24)
        u = x @ Wa
        z = h @ Wc + u @ Wd + h
        h = (z - z.amin(-1, keepdim=True)) / (z.amax(-1, keepdim=True) - z.amin(-1, keepdim=True) + 1e-8)
        expected = layer.base_layer(x) + alpha * (u + F.leaky_relu(h, 0.01)) @ Wb
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5, msg=f"call {step}")
    layer.reset_state()
    x = torch.randn(3, 5, 24)
    u = x @ Wa
    z = u @ Wd
    h = (z - z.amin(-1, keepdim=True)) / (z.amax(-1, keepdim=True) - z.amin(-1, keepdim=True) + 1e-8)
    with torch.no_grad():
        torch.testing.assert_close(
            layer(x), layer.base_layer(x) + alpha * (u + F.leaky_relu(h)) @ Wb, atol=1e-5, rtol=1e-5
        )


def test_state_alignment_rules() -> None:
    state = torch.rand(2, 3, 4)
    grown = align_state(state, 4, 5)
    assert grown.shape == (4, 5, 4)
    torch.testing.assert_close(grown[:2, :3], state)
    assert torch.all(grown[2:, :3] == 0.5) and torch.all(grown[:, 3:] == 0)
    shrunk = align_state(state, 1, 2)
    assert shrunk.shape == (1, 2, 4)


def test_count_and_init() -> None:
    model = adapted(tiny_mlp, MLP_CONFIG)
    r = 4
    assert model.get_nb_trainable_parameters()[0] == r * (24 + 40) + 2 * r * r + r * (40 + 16) + 2 * r * r
    layer = model.base_model.model.lin0
    assert all(torch.count_nonzero(getattr(layer, f"ssmlora_{k}")["default"]) == 0 for k in "BCD")
    assert tuple(layer.ssmlora_A["default"].shape) == (24, r)


def test_merge_raises_clear_error() -> None:
    model = adapted(tiny_mlp, replace(MLP_CONFIG, init_lora_weights=False))
    for action in (model.merge_and_unload, model.merge_adapter, model.base_model.model.lin0.merge):
        with pytest.raises(NotMergeableError, match="SSMLoRA is not mergeable"):
            action()
    base = model.unload()  # removing the adapter is fine
    assert not any("ssmlora" in name for name, _ in base.named_parameters())


def test_state_is_not_saved(tmp_path) -> None:
    model = adapted(tiny_mlp, replace(MLP_CONFIG, init_lora_weights=False))
    model(torch.randn(2, 24))
    assert not any("state" in key for key in model.state_dict())
