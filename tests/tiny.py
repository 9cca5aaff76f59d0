"""Tiny models and tokenizers built in the tests (nothing is downloaded)."""

from __future__ import annotations

import torch


def build_tiny_tokenizer(add_bos: bool = True, vocab_size: int = 400, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained on ``corpus`` with ``<pad>``, ``<s>``, ``</s>``; with ``add_bos`` every
    sequence starts with ``<s>`` (like Llama's tokenizers), without it bos is declared but never added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = corpus or ["Below is an instruction that describes a task.", "### Instruction:", "### Response:"]
    backend.train_from_iterator(corpus * 5, trainer)
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama_config(**overrides):
    """A small ``LlamaConfig``: 2 layers, hidden 32, MLP 64, 4 heads (2 key/value), vocabulary 64, 64 positions;
    ``overrides`` replace any field (each suite picks the sizes its checks need)."""
    from transformers import LlamaConfig

    values = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **overrides):
    """A randomly initialised Llama of :func:`tiny_llama_config` (``torch.manual_seed(seed)`` first), in eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def build_tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    """The tiny Llama for a tokenizer of ``vocab_size`` tokens (``<pad>`` 0, ``<s>`` 1, ``</s>`` 2), 1024 positions."""
    values = dict(max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    values.update(overrides)
    return tiny_llama(seed, vocab_size=vocab_size, **values)
