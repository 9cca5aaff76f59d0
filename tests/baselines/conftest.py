"""Tiny bases shared by the method battery (:mod:`tests.baselines.test_battery`) and the baselines' own tests, and
the one MeLoRA config both use that the method registry cannot express."""

from __future__ import annotations

import copy

import torch
from peft import get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from smoa.baselines import MeLoRAConfig
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


def inputs_for(make_base) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    if make_base is tiny_mlp:
        return torch.randn(3, 5, 24, generator=generator)
    return torch.randint(0, 97, (2, 7), generator=generator)


def melora_uneven() -> MeLoRAConfig:
    """MeLoRA on the MLP with minis of different ranks and scales (the registry plans n equal minis only)."""
    return MeLoRAConfig(r=[2, 3, 1, 2], lora_alpha=[4.0, 6.0, 8.0, 2.0], target_modules=["lin0", "lin1"])
