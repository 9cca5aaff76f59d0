"""Model loading: local folders, clear errors, and (slow) the packaged SmolLM2 converted once into the cache."""

import time
from pathlib import Path

import pytest
import torch

from smoa import models
from tests.tiny import tiny_llama_config


def write_tiny_folder(path):
    """A 1-layer Llama and a word-level tokenizer without pad, saved as a model folder."""
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    config = tiny_llama_config(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=2048,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(tok_models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")),
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.save_pretrained(path)
    return path


def test_local_folder_is_loaded(tmp_path):
    model, loaded = models.load_model_and_tokenizer(str(write_tiny_folder(tmp_path)), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and not model.training
    assert loaded.pad_token == "</s>"  # a tokenizer without pad gets eos
    assert model.name_or_path == str(tmp_path)


def test_a_trained_adapter_names_the_default_model_by_its_public_id(tmp_path, monkeypatch):
    """The final adapter of a run on the default model names HuggingFaceTB/SmolLM2-135M-Instruct, not the cache
    folder, and that id loads the packaged copy again without the network (a tiny model stands in for the converted
    checkpoint). Other bases keep their folder."""
    import json

    from peft import get_peft_model

    import smoa
    from smoa.methods import load_adapter
    from smoa.training.model_card import save_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SMOA_CACHE_DIR", str(tmp_path))
    folder = write_tiny_folder(models.default_model_dir(tmp_path))
    assert models.resolve_model_path(models.DEFAULT_MODEL_ID) == str(folder)
    model, _ = models.load_model_and_tokenizer("default", device="cpu")
    assert model.name_or_path == str(folder)  # while training: a local folder, so PEFT never goes online
    peft_model = get_peft_model(model, smoa.SMoAConfig(r=2, num_blocks=2, target_modules=["q_proj", "v_proj"]))
    save_adapter(peft_model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == models.DEFAULT_MODEL_ID
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert f"base_model: {models.DEFAULT_MODEL_ID}" in card and str(folder) not in card
    assert "- smoa\n" in card and "import smoa" in card and 'load_model_and_tokenizer("default")' in card
    again, _ = models.load_model_and_tokenizer(saved["base_model_name_or_path"], device="cpu")
    load_adapter(again, tmp_path / "adapter")  # the base fingerprint matches: the same weights

    other, _ = models.load_model_and_tokenizer(str(write_tiny_folder(tmp_path / "mine")), device="cpu")
    config = smoa.SMoAConfig(r=2, num_blocks=2, target_modules=["q_proj", "v_proj"])
    save_adapter(get_peft_model(other, config), tmp_path / "adapter-mine")
    saved = json.loads((tmp_path / "adapter-mine" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "mine")
    card = (tmp_path / "adapter-mine" / "README.md").read_text()
    assert f'AutoModelForCausalLM.from_pretrained("{tmp_path / "mine"}")' in card and card.count("## Loading") == 1


def test_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        models.resolve_model_path(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.resolve_model_path(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="unknown dtype"):
        models.load_model_and_tokenizer(str(tmp_path), dtype="int3")


@pytest.mark.slow
def test_default_model_is_converted_once_and_reused(tmp_path):
    started = time.perf_counter()
    model, tokenizer = models.load_model_and_tokenizer("default", cache=tmp_path, device="cpu")
    first = time.perf_counter() - started
    folder = models.default_model_dir(tmp_path)
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    started = time.perf_counter()
    again, _ = models.load_model_and_tokenizer("default", cache=tmp_path, device="cpu")
    assert time.perf_counter() - started < first
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, again(**ids).logits)
    text = tokenizer.decode(again.generate(**ids, max_new_tokens=3, do_sample=False)[0, ids["input_ids"].shape[1] :])
    assert "Paris" in text


def test_hub_ids_are_read_from_the_local_cache_only(tmp_path, monkeypatch):
    """A hub id resolves to its snapshot in the local Hugging Face cache; one that is not there is a one-line
    error with the download command, and nothing is looked up online."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = write_tiny_folder(repo / "snapshots" / ("0" * 40))
    assert Path(models.resolve_model_path("someone/tiny")) == snapshot
    assert models.load_model("someone/tiny", device="cpu").config.model_type == "llama"
    with pytest.raises(FileNotFoundError, match=r"nor in the Hugging Face cache.*`hf download someone/absent`"):
        models.resolve_model_path("someone/absent")
