"""Base layers SMoA cannot anchor on, and ranks a block cannot hold, are refused at injection with the module named."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

import smoa
from smoa.dense import UnsupportedLayerError
from tests.adapter.conftest import make_mlp


def test_an_integer_base_weight_is_refused_before_any_svd():
    model = make_mlp()
    model.lin0.weight = nn.Parameter(torch.zeros(24, 20, dtype=torch.int8), requires_grad=False)
    with pytest.raises(
        UnsupportedLayerError, match=r"module 'lin0' .* stores a Parameter of dtype torch.int8, not a floating"
    ):
        get_peft_model(model, smoa.SMoAConfig(r=4, num_blocks=2, target_modules=["lin0"]))


def test_a_packed_weight_subclass_is_refused():
    class Packed(nn.Parameter):  # stands for bitsandbytes' Params4bit and similar packed storages
        pass

    model = make_mlp()
    model.lin0.weight = Packed(torch.zeros(24, 20), requires_grad=False)
    with pytest.raises(UnsupportedLayerError, match=r"stores a Packed .* not a floating-point weight matrix"):
        get_peft_model(model, smoa.SMoAConfig(r=4, num_blocks=2, target_modules=["lin0"]))


def test_a_rank_larger_than_its_block_is_refused():
    with pytest.raises(ValueError, match=r"block 0 of module 'lin1' rank 10, more than its block size 9x12"):
        get_peft_model(make_mlp(), smoa.SMoAConfig(r=20, num_blocks=2, target_modules=["lin1"]))
    get_peft_model(make_mlp(), smoa.SMoAConfig(r=18, num_blocks=2, target_modules=["lin1"]))  # 9 per block fits
