"""The memorisation task: data, the cached top-layer forward against the full forward, and the run order."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from smoa.evidence.memorize import (
    HEX_DIGITS,
    encode_pairs,
    full_forward_value_loss,
    lower_layer_states,
    make_pairs,
    top_layer_states,
    value_logits,
    value_targets,
)
from smoa.evidence.run import target_regex
from tests.tiny import build_tiny_tokenizer, tiny_llama


def _tokenizer():
    return build_tiny_tokenizer(add_bos=False, corpus=["0123456789abcdef="])


def test_pairs_are_seeded_distinct_and_checked():
    pairs = make_pairs(50, 4, 6, seed=3)
    assert pairs == make_pairs(50, 4, 6, seed=3) != make_pairs(50, 4, 6, seed=4)
    assert len({k for k, _ in pairs}) == 50
    assert all(len(k) == 4 and len(v) == 6 and set(k + v) <= set(HEX_DIGITS) for k, v in pairs)
    with pytest.raises(ValueError, match="key_length=1"):
        make_pairs(20, 1, 4, seed=0)


def test_one_token_per_character_and_value_layout():
    tokenizer = _tokenizer()
    data = encode_pairs(make_pairs(5, 3, 4, seed=0), tokenizer)
    assert data.input_ids.shape == (5, 3 + 1 + 4)
    decoded = tokenizer.decode(data.input_ids[0].tolist())
    assert decoded == data.pairs[0][0] + "=" + data.pairs[0][1]
    assert data.value_positions.tolist() == [3, 4, 5, 6]
    assert torch.equal(data.targets, data.input_ids[:, 4:])
    hex_index = value_targets(data, torch.arange(5), data.hex_token_ids)
    assert torch.equal(data.hex_token_ids[hex_index], data.targets)


@pytest.mark.parametrize("top_layers", [1, 2, 3, 4])
def test_cached_top_layers_give_the_full_forward_loss(top_layers):
    tokenizer = _tokenizer()
    model = tiny_llama(seed=0, vocab_size=len(tokenizer), num_hidden_layers=4)
    data = encode_pairs(make_pairs(12, 4, 5, seed=1), tokenizer)
    first = 4 - top_layers
    pattern = target_regex(4, top_layers, ("q_proj", "v_proj", "up_proj", "down_proj"))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=pattern, init_lora_weights=False))
    adapted = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted and all(int(n.split("layers.")[1].split(".")[0]) >= first for n in adapted)
    hidden = lower_layer_states(peft_model, data, first, batch_size=5)
    rows = torch.tensor([0, 3, 7, 11])
    cached = value_logits(peft_model, top_layer_states(peft_model, hidden[rows], first, data.value_positions), None)
    cached_loss = nn.functional.cross_entropy(cached.flatten(0, 1), data.targets[rows].flatten())
    full_loss = full_forward_value_loss(peft_model, data, rows)
    torch.testing.assert_close(cached_loss, full_loss, rtol=1e-6, atol=1e-6)
    cached_loss.backward()  # gradients reach the adapters through the cached path
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_" in n)


def test_hex_logits_are_the_full_logits_restricted():
    tokenizer = _tokenizer()
    model = tiny_llama(seed=0, vocab_size=len(tokenizer))
    data = encode_pairs(make_pairs(4, 3, 3, seed=2), tokenizer)
    hidden = torch.randn(4, 3, model.config.hidden_size)
    full = value_logits(model, hidden, None)
    torch.testing.assert_close(value_logits(model, hidden, data.hex_token_ids), full[..., data.hex_token_ids])
