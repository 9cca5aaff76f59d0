"""Adapters saved by the authors' code import with the same ΔW, their orders fixed from then on."""

from __future__ import annotations

import json

import pytest
import torch
from peft import get_peft_model

import smoa
from smoa.adapter.authors import AuthorsCheckpointError, import_authors_adapter, read_authors_checkpoint
from smoa.cli.main import main
from tests.tiny import build_tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]


def trained(seed: int = 1):
    model = get_peft_model(build_tiny_llama(64), smoa.SMoAConfig(r=5, num_blocks=2, target_modules=TARGETS))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".smoa_" in name:
                parameter.normal_()
    return model


def write_authors_folder(model, folder, binary: bool = True):
    """What the authors' code saves for this adapter: factors named ``<module>.lora_A.<k>.weight`` (the adapter name
    dropped), no orders, and their config keys."""
    folder.mkdir()
    state = {}
    for name, parameter in model.named_parameters():
        if ".smoa_" in name:
            module, rest = name.split(".smoa_")
            which, _, block = rest.split(".")
            state[f"{module}.lora_{which}.{block}.weight"] = parameter.detach().clone()
    if binary:
        torch.save(state, folder / "adapter_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "SMOA", "r": 5, "num_blocks": 2, "branch_ranks": None, "lora_alpha": 8,
              "lora_dropout": 0.0, "target_modules": TARGETS, "fan_in_fan_out": False, "bias": "none",
              "modules_to_save": None, "init_lora_weights": True, "base_model_name_or_path": None,
              "task_type": "CAUSAL_LM", "inference_mode": True}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def delta_weights(model):
    return {
        name: layer.get_delta_weight("default") for name, layer in model.named_modules() if hasattr(layer, "smoa_A")
    }


@pytest.mark.parametrize("binary", [True, False])
def test_import_gives_the_same_update(tmp_path, binary):
    source = trained()
    folder = write_authors_folder(source, tmp_path / "theirs", binary)
    with pytest.warns(UserWarning, match="recomputes them at every load"):
        imported = import_authors_adapter(build_tiny_llama(64), folder)
    ours, theirs = delta_weights(source), delta_weights(imported)
    assert ours.keys() == theirs.keys() and len(ours) == 6
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(source(input_ids=ids).logits, imported(input_ids=ids).logits)


def test_cli_import_saves_an_adapter_with_its_orders(tmp_path, capsys):
    from tests.training.conftest import write_tiny_model

    base = write_tiny_model(tmp_path / "base")
    from transformers import AutoModelForCausalLM

    source = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), smoa.SMoAConfig(r=5, num_blocks=2, target_modules=TARGETS)
    )
    with torch.no_grad():
        for name, parameter in source.named_parameters():
            if ".smoa_" in name:
                parameter.normal_()
    folder = write_authors_folder(source, tmp_path / "theirs")
    out = tmp_path / "ours"
    assert main(["import-authors", str(folder), "--model", str(base), "--output", str(out)]) == 0
    assert "recomputes them at every load" in capsys.readouterr().err
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))
    ours, theirs = delta_weights(source), delta_weights(loaded)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert main(["import-authors", str(folder), "--model", str(base), "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["import-authors", str(out), "--model", str(base), "--output", str(tmp_path / "x")]) == 2
    assert "is an adapter of this project" in capsys.readouterr().err


def test_bad_folders_are_named(tmp_path):
    source = trained()
    folder = write_authors_folder(source, tmp_path / "theirs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuthorsCheckpointError, match=r"holds no adapter_config\.json"):
        read_authors_checkpoint(tmp_path / "empty")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(AuthorsCheckpointError, match="peft_type is 'LORA', not SMOA"):
        read_authors_checkpoint(folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 6}))  # factors of r=5
    wrong = r"lora_A\.1\.weight has shape \(2, 16\), the model's block needs \(3, 16\)"
    with pytest.raises(AuthorsCheckpointError, match=wrong):
        import_authors_adapter(build_tiny_llama(64), folder)
