"""MeLoRA against a dense reference of its formula, its parameter count, init and errors (the behaviour checks every
method passes are rows of tests/baselines/test_battery.py)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from smoa.baselines import MeLoRAConfig, UnsupportedLayerError
from tests.baselines.conftest import TinyMLP, adapted, melora_uneven, tiny_llama, tiny_mlp

MLP_CONFIG = melora_uneven()


def random_init(config: MeLoRAConfig) -> MeLoRAConfig:
    return MeLoRAConfig(**{**config.to_dict(), "init_lora_weights": False, "peft_type": None})


def reference_delta(A: torch.Tensor, B: torch.Tensor, ranks, alphas, d_in: int, d_out: int) -> torch.Tensor:
    """ΔW[i-th out slice, i-th in slice] = α_i / r_i · B_i A_i, everything else zero (written out by slices)."""
    n = len(ranks)
    delta = torch.zeros(d_out, d_in)
    start = 0
    for i, (r, alpha) in enumerate(zip(ranks, alphas, strict=True)):
        a_i = A[start : start + r]
        b_i = B[:, start : start + r]
        rows = slice(i * d_out // n, (i + 1) * d_out // n)
        cols = slice(i * d_in // n, (i + 1) * d_in // n)
        delta[rows, cols] = alpha / r * b_i @ a_i
        start += r
    return delta


def test_update_matches_reference() -> None:
    model = adapted(tiny_mlp, random_init(MLP_CONFIG))
    layer = model.base_model.model.lin0
    A, B = layer.melora_A["default"].detach(), layer.melora_B["default"].detach()
    expected = reference_delta(A, B, MLP_CONFIG.r, MLP_CONFIG.lora_alpha, 24, 40)
    torch.testing.assert_close(layer.get_delta_weight("default"), expected)
    x = torch.randn(6, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - layer.base_layer(x), x @ expected.T, atol=1e-5, rtol=1e-5)
    # off-diagonal blocks are exactly zero
    assert torch.count_nonzero(expected[:10, 6:]) == 0


def test_parameter_count_formula() -> None:
    model = adapted(tiny_mlp, MLP_CONFIG)
    trainable, _ = model.get_nb_trainable_parameters()
    ranks, n = MLP_CONFIG.r, len(MLP_CONFIG.r)
    assert trainable == sum(ranks) * (24 + 40) // n + sum(ranks) * (40 + 16) // n
    layer = model.base_model.model.lin1
    assert tuple(layer.melora_A["default"].shape) == (sum(ranks), 40 // n)
    assert tuple(layer.melora_B["default"].shape) == (16 // n, sum(ranks))


def test_init_is_kaiming_a_and_zero_b() -> None:
    layer = adapted(tiny_mlp, MLP_CONFIG).base_model.model.lin0
    assert torch.count_nonzero(layer.melora_B["default"]) == 0
    bound = 1 / (24 / 4) ** 0.5  # Kaiming-uniform with a = √5: 1/√fan_in, fan_in = d_in / n
    assert layer.melora_A["default"].abs().max() <= bound


def test_indivisible_sizes_raise_naming_the_module() -> None:
    config = MeLoRAConfig(r=[1] * 7, target_modules=["lin0"])
    with pytest.raises(ValueError, match=r"'lin0'.*divisible by n = len\(r\) = 7"):
        get_peft_model(TinyMLP(), config)


def test_unsupported_layer_type_names_module_and_type() -> None:
    config = MeLoRAConfig(r=[1] * 2, target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(UnsupportedLayerError, match=r"'model\.embed_tokens'.*torch\.nn\.modules\.sparse\.Embedding"):
        get_peft_model(tiny_llama(), config)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="list of per-mini ranks"):
        MeLoRAConfig(r=4)
    with pytest.raises(ValueError, match="lora_alpha has 2 entries but r has 3"):
        MeLoRAConfig(r=[1, 1, 1], lora_alpha=[1.0, 2.0])
