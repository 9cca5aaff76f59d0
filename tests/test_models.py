"""Model loading: local folders, clear errors, and (slow) the packaged SmolLM2 converted once into the cache."""

import time

import pytest
import torch

from smoa import models


def test_local_folder_is_loaded(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(tok_models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")),
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.save_pretrained(tmp_path)
    model, loaded = models.load_model_and_tokenizer(str(tmp_path), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and not model.training
    assert loaded.pad_token == "</s>"  # a tokenizer without pad gets eos


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
