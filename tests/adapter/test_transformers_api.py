"""SMoA through transformers' own adapter API and PEFT's enum-typed peft_type (after ``import smoa``)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import smoa
from smoa.baselines import MeLoRAConfig, MoRAConfig, SSMLoRAConfig
from tests.adapter.conftest import LLAMA_TARGETS, make_llama


@pytest.fixture
def folders(tmp_path):
    base_dir = tmp_path / "base"
    make_llama().save_pretrained(base_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        smoa.SMoAConfig(r=4, num_blocks=2, target_modules=LLAMA_TARGETS, init_lora_weights=False),
    )
    model.save_pretrained(tmp_path / "adapter")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / "adapter"))
    return base_dir, tmp_path / "adapter", reference.eval()


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("config_cls", [smoa.SMoAConfig, MeLoRAConfig, MoRAConfig, SSMLoRAConfig])
def test_peft_type_behaves_like_peft_enum_members(config_cls):
    peft_type = config_cls().peft_type
    assert peft_type.value == peft_type == peft_type.name and json.dumps(peft_type) == f'"{peft_type.value}"'


def test_saved_config_is_unchanged_plain_json(folders):
    _, adapter, _ = folders
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "SMOA"


def test_from_pretrained_on_the_adapter_folder(folders, tokens):
    _, adapter, reference = folders
    model = AutoModelForCausalLM.from_pretrained(adapter).eval()  # transformers finds the base and loads SMoA
    torch.testing.assert_close(logits(model, tokens), logits(reference, tokens))


def test_load_adapter_into_a_transformers_model(folders, tokens):
    """transformers' ``load_adapter`` works with SMoA as with LoRA. (Its set/disable/enable/delete_adapter need
    PEFT >= 0.22 in transformers 5.24, for every method; PEFT 0.21 is the newest release, so those stay out.)"""
    base_dir, adapter, reference = folders
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    plain = logits(model, tokens)
    model.load_adapter(str(adapter), adapter_name="mine")
    adapted = logits(model, tokens)
    torch.testing.assert_close(adapted, logits(reference, tokens))
    assert not torch.allclose(adapted, plain)


def test_peft_features_smoa_cannot_support_say_why(folders, tmp_path):
    from peft import PeftMixedModel
    from peft.utils.hotswap import hotswap_adapter

    base_dir, adapter, reference = folders
    with pytest.raises(NotImplementedError, match="add_weighted_adapter is not supported for SMoA"):
        reference.add_weighted_adapter(["default"], [1.0], "combined")
    config = smoa.SMoAConfig(r=4, num_blocks=2, target_modules=LLAMA_TARGETS)
    with pytest.raises(ValueError, match=r"(?i)not (supported|compatible)"):
        PeftMixedModel(AutoModelForCausalLM.from_pretrained(base_dir), config)
    with pytest.raises(ValueError, match=r"(?i)(not supported|only.*lora|hotswap)"):
        hotswap_adapter(reference, str(adapter), adapter_name="default")
