"""The LM head at selected positions gives transformers' own loss, gradients and logits."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

import smoa
from smoa.lm_head import causal_lm_loss, selected_logits, supports_selected_logits
from tests.tiny import build_tiny_llama

VOCAB = 97


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64)).eval()


def batch(seed: int = 0):
    """Right-padded rows of different lengths, labels on a response span only (-100 elsewhere)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (length, start) in enumerate([(12, 8), (9, 4), (7, 6)]):
        mask[row, length:] = 0
        ids[row, length:] = 0
        labels[row, start:length] = ids[row, start:length]
    return ids, mask, labels


def models():
    smoa_config = smoa.SMoAConfig(
        r=4, num_blocks=2, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
    )
    lora_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    gpt2_config = smoa.SMoAConfig(r=4, num_blocks=2, target_modules=["c_attn"], init_lora_weights=False)
    return {
        "llama": lambda: build_tiny_llama(VOCAB),
        "llama+smoa": lambda: get_peft_model(build_tiny_llama(VOCAB), copy.deepcopy(smoa_config)),
        "llama+lora": lambda: get_peft_model(build_tiny_llama(VOCAB), copy.deepcopy(lora_config)),
        "gpt2+smoa": lambda: get_peft_model(tiny_gpt2(), copy.deepcopy(gpt2_config)),
    }


@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("num_items", [None, 11])
def test_loss_and_gradients_match_the_full_head(name, num_items):
    make = models()[name]
    ids, mask, labels = batch()
    fast, full = make(), make()
    assert supports_selected_logits(fast)
    items = None if num_items is None else torch.tensor(num_items)
    loss_fast = causal_lm_loss(fast, ids, mask, labels, items)
    kwargs = {} if items is None else {"num_items_in_batch": items}
    loss_full = full(input_ids=ids, attention_mask=mask, labels=labels, **kwargs).loss
    torch.testing.assert_close(loss_fast, loss_full, rtol=1e-6, atol=1e-6)
    loss_fast.backward()
    loss_full.backward()
    trainable = [(n, p) for n, p in fast.named_parameters() if p.requires_grad]
    assert trainable
    full_params = dict(full.named_parameters())
    for param_name, param in trainable:
        torch.testing.assert_close(param.grad, full_params[param_name].grad, rtol=1e-5, atol=1e-6)


def test_selected_logits_equal_indexed_full_logits():
    model = models()["llama+smoa"]()
    ids, mask, labels = batch(1)
    positions = labels != -100
    with torch.no_grad():
        torch.testing.assert_close(
            selected_logits(model, ids, mask, positions), model(input_ids=ids, attention_mask=mask).logits[positions]
        )


def test_prompt_learning_falls_back_to_the_full_forward():
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    model = get_peft_model(build_tiny_llama(VOCAB), config)
    assert not supports_selected_logits(model)
    ids, mask, _ = batch(2)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, -1] = True
    with torch.no_grad():
        logits = selected_logits(model, ids, mask, positions)
    assert logits.shape == (3, VOCAB)  # the virtual tokens' positions are not among the selected ones
