"""One gate for every way a saved adapter reaches a model: every tampering × every load path is refused by name.

Load paths: PEFT's ``PeftModel.from_pretrained`` and ``load_adapter``, transformers' ``load_adapter`` and
``from_pretrained(adapter_dir)``, the loader of ``smoa eval --adapter`` / analysis / study
(:func:`smoa.methods.load_adapter`), and merging (``merge_and_unload``, :func:`merge_into_full_precision`). The
intact adapter must give the same logits on every path; each tampered one must raise
:class:`~smoa.adapter.checkpoint.AdapterFileError` (or :class:`~smoa.methods.AdapterFolderError`) naming what is wrong.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import smoa
from smoa.adapter.checkpoint import AdapterFileError
from smoa.adapter.deploy import merge_into_full_precision
from smoa.methods import AdapterFolderError
from smoa.methods import load_adapter as smoa_load_adapter
from tests.adapter.conftest import LLAMA_TARGETS, make_llama

REFUSED = (AdapterFileError, AdapterFolderError)
TOKENS = torch.tensor([[1, 5, 9, 3, 7, 2]])


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    make_llama(0).save_pretrained(root / "base")
    make_llama(1).save_pretrained(root / "other-base")
    config = smoa.SMoAConfig(r=4, num_blocks=2, target_modules=LLAMA_TARGETS, init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), config)
    model.save_pretrained(root / "intact")
    with torch.no_grad():
        reference = model.eval()(TOKENS).logits
    return root, reference


def _module_keys(tensors, module):
    return [k for k in tensors if f".{module}." in k or k.endswith(f".{module}.smoa_row_order")]


def _edit_tensors(change):
    def tamper(folder):
        tensors = load_file(folder / "adapter_model.safetensors")
        change(tensors)
        save_file(tensors, folder / "adapter_model.safetensors")

    return tamper


def _edit_config(**changes):
    def tamper(folder):
        config = json.loads((folder / "adapter_config.json").read_text())
        config.update(changes)
        (folder / "adapter_config.json").write_text(json.dumps(config))

    return tamper


def _first(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix))


def _duplicate_order(tensors):
    key = _first(tensors, "smoa_row_order")
    tensors[key][1] = tensors[key][0]


def _drop_module(tensors):
    for key in [k for k in tensors if ".layers.1.self_attn.k_proj." in k]:
        del tensors[key]


def _drop_factors(tensors):
    for key in [k for k in tensors if ".layers.1.mlp.up_proj.smoa_" in k and (".smoa_A." in k or ".smoa_B." in k)]:
        del tensors[key]


def _extra_module(tensors):
    for key in [k for k in tensors if ".layers.0.self_attn.q_proj." in k]:
        tensors[key.replace(".layers.0.", ".layers.7.")] = tensors[key].clone()


def _wrong_shape(tensors):
    key = _first(tensors, ".smoa_A.0")
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])


def _float_order(tensors):
    key = _first(tensors, "smoa_col_order")
    tensors[key] = tensors[key].float()


def _nan_factor(tensors):
    tensors[_first(tensors, ".smoa_B.1")][0, 0] = float("nan")


def _drop_fingerprint(tensors):
    del tensors[_first(tensors, "smoa_fingerprint")]


def _lora_config(folder):
    config = LoraConfig(r=4, target_modules=LLAMA_TARGETS)
    config.base_model_name_or_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    (folder / "adapter_config.json").unlink()
    config.save_pretrained(folder)


def _other_base(folder):
    pass  # the folder is intact; it is loaded onto a base it was not trained on


TAMPERINGS = {
    "other base": (_other_base, r"trained on a different base weight"),
    "duplicate order": (_edit_tensors(_duplicate_order), r"smoa_row_order .* is not a permutation"),
    "float order": (_edit_tensors(_float_order), r"smoa_col_order .* dtype"),
    "module missing": (_edit_tensors(_drop_module), r"layers\.1\.self_attn\.k_proj"),
    "factors missing": (_edit_tensors(_drop_factors), r"layers\.1\.mlp\.up_proj"),
    "module the model lacks": (_edit_tensors(_extra_module), r"layers\.7\.self_attn\.q_proj"),
    "wrong shape": (_edit_tensors(_wrong_shape), r"smoa_A\.0|shape|rank"),
    "nan factor": (_edit_tensors(_nan_factor), r"non-finite"),
    "fingerprint missing": (_edit_tensors(_drop_fingerprint), r"no finite base fingerprint"),
    "num_blocks edited": (_edit_config(num_blocks=4), r"num_blocks"),
    "LoRA config over SMoA weights": (_lora_config, r"LORA.*SMOA|SMOA.*LORA"),
}


def _base(root, tampering):
    return AutoModelForCausalLM.from_pretrained(root / ("other-base" if tampering == "other base" else "base"))


def _peft_from_pretrained(root, folder, tampering):
    return PeftModel.from_pretrained(_base(root, tampering), str(folder))


def _peft_load_adapter(root, folder, tampering):
    model = get_peft_model(_base(root, tampering), smoa.SMoAConfig(r=2, target_modules=["q_proj"]), "first")
    model.load_adapter(str(folder), adapter_name="default")
    model.set_adapter("default")
    return model


def _transformers_load_adapter(root, folder, tampering):
    model = _base(root, tampering)
    model.load_adapter(str(folder))
    return model


def _transformers_from_pretrained(root, folder, tampering):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(root / ("other-base" if tampering == "other base" else "base"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return AutoModelForCausalLM.from_pretrained(folder)


def _smoa_loader(root, folder, tampering):
    return smoa_load_adapter(_base(root, tampering), folder)


def _merge_and_unload(root, folder, tampering):
    return PeftModel.from_pretrained(_base(root, tampering), str(folder)).merge_and_unload()


def _merge_into_full_precision(root, folder, tampering):
    adapted = PeftModel.from_pretrained(_base(root, tampering), str(folder))
    return merge_into_full_precision(adapted, _base(root, tampering))


PATHS = {
    "PeftModel.from_pretrained": _peft_from_pretrained,
    "PeftModel.load_adapter": _peft_load_adapter,
    "transformers load_adapter": _transformers_load_adapter,
    "transformers from_pretrained": _transformers_from_pretrained,
    "smoa loader (eval, analysis, study)": _smoa_loader,
    "merge_and_unload": _merge_and_unload,
    "merge_into_full_precision": _merge_into_full_precision,
}


def _copy(root, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(root / "intact", folder)
    return folder


@pytest.mark.parametrize("path", list(PATHS))
def test_the_intact_adapter_gives_the_same_logits_on_every_path(bases, tmp_path, path):
    root, reference = bases
    model = PATHS[path](root, _copy(root, tmp_path), "intact")
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(TOKENS).logits, reference)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_every_tampering_is_refused_on_every_path(bases, tmp_path, path, tampering):
    root, _ = bases
    folder = _copy(root, tmp_path)
    tamper, message = TAMPERINGS[tampering]
    tamper(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(REFUSED, match=message):
            PATHS[path](root, folder, tampering)


def test_a_merge_refuses_orders_changed_in_memory_after_the_load(bases):
    root, _ = bases
    model = PeftModel.from_pretrained(_base(root, "intact"), str(root / "intact"))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.smoa_row_order["default"][1] = layer.smoa_row_order["default"][0]
    with pytest.raises(AdapterFileError, match=r"smoa_row_order of module '.*q_proj' is not a permutation"):
        model.merge_and_unload()


def test_smoa_eval_refuses_a_tampered_adapter_in_one_line(bases, tmp_path, capsys):
    from smoa.cli.main import main
    from tests.tiny import build_tiny_tokenizer

    root, _ = bases
    folder = _copy(root, tmp_path)
    _lora_config(folder)
    base = tmp_path / "base"
    shutil.copytree(root / "base", base)
    build_tiny_tokenizer().save_pretrained(base)
    code = main(["eval", "--model", str(base), "--adapter", str(folder), "--task", "boolq", "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "peft_type LORA, but the weights are SMOA parameters" in err.strip().splitlines()[-1]


def _drop_orders(tensors):
    for key in [k for k in tensors if ".layers.0.self_attn.q_proj.smoa_" in k and k.endswith("_order")]:
        del tensors[key]


@pytest.mark.parametrize("path", list(PATHS))
def test_missing_orders_are_recomputed_with_a_warning_on_every_path(bases, tmp_path, path):
    root, reference = bases
    folder = _copy(root, tmp_path)
    _edit_tensors(_drop_orders)(folder)
    with pytest.warns(UserWarning, match=r"no saved block orders for 1 module\(s\).*layers\.0\.self_attn\.q_proj"):
        model = PATHS[path](root, folder, "orders missing")
    with torch.no_grad():  # the same base weights give the same orders here
        torch.testing.assert_close(model.eval()(TOKENS).logits, reference)
