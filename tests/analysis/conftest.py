"""Tiny models and adapters built in the analysis tests."""

from __future__ import annotations

import copy

import torch
from peft import get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

import smoa  # noqa: F401  (registers SMoA and the baselines with PEFT)
from tests import tiny

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
VOCAB = 97


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny.tiny_llama(seed, hidden_size=48, intermediate_size=96, vocab_size=VOCAB)


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64)).eval()


def adapted(base: nn.Module, config, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return get_peft_model(copy.deepcopy(base), copy.deepcopy(config)).eval()


def calibration_batches(n: int = 4, length: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (1, length), generator=g) for _ in range(n)]
