"""A tiny Llama with a word-level tokenizer saved as a model folder, and a tiny LLM-Adapters training file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.tiny import tiny_llama_config

WORDS = ["alpha", "beta", "gamma", "delta", "red", "blue", "cat", "dog", "sun", "moon"]


def commonsense_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(WORDS, 2)
        answer = rng.choice(["true", "false"])
        rows.append(
            {
                "instruction": "Please answer the following question with true or false, question: "
                f"is {a} before {b}?\n\nAnswer format: true/false",
                "input": "",
                "output": f"the correct answer is {answer}",
                "answer": answer,
            }
        )
    return rows


def write_tiny_model(directory: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    text = " ".join(r["instruction"] + " " + r["output"] for r in commonsense_rows(50))
    words = sorted(
        {w for w in text.replace("\n", " ").split(" ") if w}
        | set(WORDS)
        | {"###", "Instruction:", "Response:", "Below"}
    )
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(seed)
    config = tiny_llama_config(
        vocab_size=len(vocab), intermediate_size=48, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
        pad_token_id=3,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "commonsense_170k.json"
    path.write_text(json.dumps(commonsense_rows(48)))
    return path


def tiny_recipe_values(model_dir: Path, train_file: Path, output_dir: Path, **extra) -> dict:
    values = dict(
        model=str(model_dir),
        task="commonsense",
        train_file=str(train_file),
        output_dir=str(output_dir),
        method="smoa",
        method_args={"r": 4, "num_blocks": 2, "lora_alpha": 8, "lora_dropout": 0.0},
        val_size=8,
        max_steps=6,
        batch_size=4,
        micro_batch_size=2,
        warmup_steps=1,
        learning_rate=5e-3,
        eval_steps=2,
        save_steps=2,
        keep_last=1,
        logging_steps=1,
        eval_tasks=[],
        progress=False,
        seed=7,
    )
    values.update(extra)
    return values
