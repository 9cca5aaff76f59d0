"""Tiny models and the PEFT test battery shared by the baseline tests."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

import smoa.baselines
from tests import tiny


class TinyMLP(nn.Module):
    """Two dense layers with non-square, non-power-of-two sizes (so padding and tiling paths run)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(24, 40)
        self.lin1 = nn.Linear(40, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny.tiny_llama(seed, hidden_size=64, intermediate_size=128, vocab_size=97)


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64)).eval()


def tiny_mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP().eval()


def adapted(make_base, config, seed: int = 0) -> nn.Module:
    model = get_peft_model(make_base(seed), copy.deepcopy(config))
    model.eval()
    return model


def run(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(inputs)
    return out.logits if hasattr(out, "logits") else out


def reset(model: nn.Module) -> None:
    """Clear runtime state (SSMLoRA's recurrence) so two models are compared from the same start."""
    for module in model.modules():
        if hasattr(module, "reset_state"):
            module.reset_state()


MLP_INPUT = None


def inputs_for(make_base) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    if make_base is tiny_mlp:
        return torch.randn(3, 5, 24, generator=generator)
    return torch.randint(0, 97, (2, 7), generator=generator)


# ---------------------------------------------------------------------------------------------------- battery --
def check_identity_at_init(make_base, config) -> None:
    x = inputs_for(make_base)
    base = run(make_base(0), x)
    model = adapted(make_base, config)
    torch.testing.assert_close(run(model, x), base, atol=0, rtol=0)


def check_not_noop(make_base, config) -> None:
    x = inputs_for(make_base)
    assert not torch.allclose(run(adapted(make_base, config), x), run(make_base(0), x), atol=1e-4)


def check_save_load(make_base, config, tmp_path) -> None:
    x = inputs_for(make_base)
    model = adapted(make_base, config)
    reset(model)
    expected = run(model, x)
    model.save_pretrained(tmp_path)
    torch.manual_seed(9999)  # a different RNG state: any re-initialisation would show
    loaded = PeftModel.from_pretrained(make_base(0), tmp_path).eval()
    reset(loaded)
    torch.testing.assert_close(run(loaded, x), expected, atol=1e-6, rtol=0)


def check_merge(make_base, config) -> None:
    x = inputs_for(make_base)
    model = adapted(make_base, config)
    unmerged = run(model, x)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    model.merge_adapter()
    merged = run(model, x)
    model.merge_adapter()  # idempotent: already merged adapters are skipped
    torch.testing.assert_close(run(model, x), merged, atol=0, rtol=0)
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(param, weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(run(model, x), unmerged, atol=1e-6, rtol=0)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=0)
    unloaded = model.merge_and_unload()
    assert not any(isinstance(m, smoa.baselines.common.DenseAdapterLayer) for m in unloaded.modules())
    torch.testing.assert_close(run(unloaded, x), unmerged, atol=1e-4, rtol=0)


def check_safe_merge(make_base, config) -> None:
    model = adapted(make_base, config)
    x = inputs_for(make_base)
    unmerged = run(model, x)
    model.base_model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(run(model, x), unmerged, atol=1e-4, rtol=0)


def check_only_adapter_trains(make_base, config, prefix: str) -> None:
    model = adapted(make_base, config)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(prefix in n for n in trainable), sorted(trainable)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = inputs_for(make_base)
    for _ in range(2):  # B-type factors start at zero; the second step moves every factor
        out = model(x)
        loss = (out.logits if hasattr(out, "logits") else out).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in trainable), (name, changed)


def check_disable_adapter(make_base, config) -> None:
    x = inputs_for(make_base)
    base = run(make_base(0), x)
    model = adapted(make_base, config)
    with model.disable_adapter():
        torch.testing.assert_close(run(model, x), base, atol=0, rtol=0)
    assert not torch.allclose(run(model, x), base, atol=1e-4)


def check_two_adapters(make_base, config) -> None:
    x = inputs_for(make_base)
    model = adapted(make_base, config)
    reset(model)
    first = run(model, x)
    torch.manual_seed(1)
    model.add_adapter("other", copy.deepcopy(config))
    model.set_adapter("other")
    reset(model)
    second = run(model, x)
    assert not torch.allclose(first, second, atol=1e-4)
    model.set_adapter("default")
    reset(model)
    torch.testing.assert_close(run(model, x), first, atol=1e-6, rtol=0)


@pytest.fixture
def seeded() -> None:
    torch.manual_seed(0)
