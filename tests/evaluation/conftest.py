"""A tiny randomly initialised Llama and a tiny byte-level tokenizer, built in the test session."""

import pytest

from tests import tiny

CORPUS = [
    "Below is an instruction that describes a task.",
    "### Instruction:",
    "### Response:",
    "the correct answer is answer1 answer2 true false solution1 option2 ending3",
]


def build_tiny_tokenizer(add_bos: bool = True):
    return tiny.build_tiny_tokenizer(add_bos, vocab_size=320, corpus=CORPUS)


def build_tiny_model(vocab_size: int, seed: int = 0):
    return tiny.build_tiny_llama(vocab_size, seed)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return build_tiny_model(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder
