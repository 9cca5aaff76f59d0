"""A saved SMoA adapter is the truth: an edited config or a damaged file is refused, naming the file and the key."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import smoa
from smoa.adapter.checkpoint import AdapterFileError
from tests.adapter.conftest import LLAMA_TARGETS, make_llama


@pytest.fixture
def saved(tmp_path):
    model = get_peft_model(
        make_llama(), smoa.SMoAConfig(r=4, num_blocks=2, target_modules=LLAMA_TARGETS, init_lora_weights=False)
    )
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def edit_config(path, **changes):
    config = json.loads((path / "adapter_config.json").read_text())
    for key, value in changes.items():
        if value is ...:
            del config[key]
        else:
            config[key] = value
    (path / "adapter_config.json").write_text(json.dumps(config))


def edit_tensors(path, change):
    tensors = load_file(path / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, path / "adapter_model.safetensors")


def load(path):
    return PeftModel.from_pretrained(make_llama(), str(path))


def test_the_intact_adapter_loads(saved):
    load(saved)


def test_removed_target_modules_are_refused(saved):
    edit_config(saved, target_modules=...)
    with pytest.raises(AdapterFileError, match=r"adapter_config.json has no target_modules"):
        load(saved)


def test_target_modules_that_drop_saved_factors_are_refused(saved):
    edit_config(saved, target_modules=["q_proj", "v_proj"])
    with pytest.raises(AdapterFileError, match=r"does not cover module '.*(k_proj|up_proj|down_proj)'"):
        load(saved)


def test_target_modules_with_no_saved_factors_are_refused(saved):
    edit_config(saved, target_modules=[*LLAMA_TARGETS, "o_proj"])
    with pytest.raises(AdapterFileError, match=r"names 'o_proj', but .* holds no factors"):
        load(saved)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_non_finite_alpha_is_refused_naming_the_file(saved, alpha):
    edit_config(saved, lora_alpha=alpha)
    with pytest.raises(AdapterFileError, match=r"adapter_config.json: SMoAConfig.lora_alpha=.* must be finite"):
        load(saved)


def test_a_nan_factor_is_refused_naming_the_key(saved):
    def poison(tensors):
        key = next(k for k in tensors if ".smoa_B.0" in k)
        tensors[key][0, 0] = float("nan")

    edit_tensors(saved, poison)
    with pytest.raises(AdapterFileError, match=r"non-finite values .* in '.*smoa_B\.0'"):
        load(saved)


@pytest.mark.parametrize("damage", ["nan", "missing"])
def test_a_damaged_fingerprint_is_refused_unless_the_check_is_off(saved, damage):
    def hit(tensors):
        key = next(k for k in tensors if k.endswith("smoa_fingerprint"))
        if damage == "nan":
            tensors[key] = torch.full_like(tensors[key], float("nan"))
        else:
            del tensors[key]

    edit_tensors(saved, hit)
    with pytest.raises(AdapterFileError, match=r"no finite base fingerprint \('.*\.smoa_fingerprint' is missing"):
        load(saved)
    config = smoa.SMoAConfig.from_pretrained(str(saved))  # as the message says: the config, check off, loads
    config.base_fingerprint_check = "off"
    PeftModel.from_pretrained(make_llama(), str(saved), config=config)


def test_missing_orders_are_recomputed_with_a_warning(saved):
    reference = load(saved)
    edit_tensors(saved, lambda t: [t.pop(k) for k in [k for k in t if k.endswith(("row_order", "col_order"))]])
    with pytest.warns(UserWarning, match=r"no saved block orders .* recomputed by SVD"):
        reloaded = load(saved)
    tokens = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, reference(tokens).logits)
    for name, layer in smoa.smoa_layers(reloaded).items():
        want = smoa.smoa_layers(reference)[name]
        assert torch.equal(layer.smoa_row_order["default"], want.smoa_row_order["default"])
