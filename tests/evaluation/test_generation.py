"""Batched left-padded generation equals one-prompt-at-a-time generation, in input order."""

import pytest
import torch

from smoa.evaluation.generation import cut_at_stop_strings, generate_batched, generation_config, left_pad
from smoa.tasks import DecodingSettings


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cut_at_stop_strings():
    assert cut_at_stop_strings("hello R: next Q: more", ("Q:", "R:")) == "hello "
    assert cut_at_stop_strings("hello", ()) == "hello"


@pytest.mark.parametrize("beams", [1, 3])
def test_batched_equals_single(tiny_model, tiny_tokenizer, beams):
    texts = ["the correct answer is", "Below is an instruction that describes a task. ### Response:", "true false"]
    prompts = [[tiny_tokenizer.bos_token_id, *tiny_tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    decoding = DecodingSettings(max_new_tokens=6, num_beams=beams)
    batched = generate_batched(tiny_model, tiny_tokenizer, prompts, decoding, batch_size=3)
    single = [generate_batched(tiny_model, tiny_tokenizer, [p], decoding, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert any(batched)  # a random model still emits text


def test_continuation_is_greedy_argmax(tiny_model, tiny_tokenizer):
    prompt = [tiny_tokenizer.bos_token_id, *tiny_tokenizer("true false", add_special_tokens=False)["input_ids"]]
    [text] = generate_batched(tiny_model, tiny_tokenizer, [prompt], DecodingSettings(max_new_tokens=1, num_beams=1))
    with torch.no_grad():
        expected = tiny_model(torch.tensor([prompt])).logits[0, -1].argmax().item()
    assert text == tiny_tokenizer.decode([expected], skip_special_tokens=True)


@pytest.mark.parametrize("beams", [1, 4])
def test_generation_config_is_valid_for_its_beams(beams):
    """GSM8K's length penalty of 0.9 is kept for beam search and left out of greedy decoding, where transformers
    would warn that ``length_penalty`` is not valid (``validate(strict=True)`` raises on that warning)."""
    decoding = DecodingSettings(max_new_tokens=8, num_beams=beams, length_penalty=0.9, no_repeat_ngram_size=4)
    config = generation_config(decoding, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    config.validate(strict=True)
    assert config.num_beams == beams and config.no_repeat_ngram_size == 4
    assert config.length_penalty == (0.9 if beams > 1 else None)
