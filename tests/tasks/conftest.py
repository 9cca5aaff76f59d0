"""A tiny fast tokenizer built in the test session (byte-level BPE, bos/eos/pad), for tokenisation tests."""

import pytest


def build_tiny_tokenizer(add_bos: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.", "### Instruction:", "### Response:", "the correct answer is answer1 answer2 true false"]
    backend.train_from_iterator(corpus * 5, trainer)
    if add_bos:  # like Llama's tokenizers: every sequence starts with bos
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def plain_tokenizer():
    """Declares a bos it never prepends, like SmolLM2's tokenizer."""
    return build_tiny_tokenizer(add_bos=False)
