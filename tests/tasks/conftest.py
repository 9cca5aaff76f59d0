"""A tiny fast tokenizer built in the test session (byte-level BPE, bos/eos/pad), for tokenisation tests."""

import pytest

from tests import tiny

CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:",
    "### Response:",
    "the correct answer is answer1 answer2 true false",
]


def build_tiny_tokenizer(add_bos: bool = True):
    return tiny.build_tiny_tokenizer(add_bos, vocab_size=400, corpus=CORPUS)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def plain_tokenizer():
    """Declares a bos it never prepends, like SmolLM2's tokenizer."""
    return build_tiny_tokenizer(add_bos=False)
