"""Prompt templates and the record → training-tensor step.

A template turns a :class:`~smoa.tasks.records.Record` into the text a model reads (``prompt``) and the text it must
produce (``response``). Training sequences are ``bos + prompt + response + eos`` (bos only for tokenizers that
use one); the loss covers the response only
(the default) or the whole sequence (DoRA / LLM-Adapters). Evaluation feeds ``bos + prompt`` and compares the
generated continuation. Prompt and response are tokenised separately and concatenated, so the prompt tokens seen at
evaluation are exactly the ones seen in training.

Templates (the papers' protocols):

- ``smoa`` (default for commonsense; HiRA/SMoA): Alpaca-style, response-only loss, prompt ≤ 256 tokens, response
  ≤ 16 tokens.
- ``dora`` (DoRA / LLM-Adapters): the same text indented by 16 spaces, whole-sequence loss, ≤ 256 tokens in all.
- ``metamath`` (math): MetaMath's evaluation prompt, ending ``"### Response: Let's think step by step."``; training
  uses it too (Decision: MetaMath's own training prompt stops at ``"### Response:"``; one prompt for both keeps
  what the model reads at evaluation identical to what it was trained on), target ``" " + response``.
- ``dialogue`` (ConvAI2, HiRA): ``"CONTEXT: {instruction} TARGET: {output}"``, loss after ``TARGET:``, ≤ 512 tokens.

Templates for your own data (:mod:`smoa.tasks.custom`), each ≤ 1024 tokens unless the recipe's ``max_length`` says
otherwise:

- ``alpaca`` (instruction records): Alpaca's prompt, with its ``### Input:`` section when the record has an input;
  response-only loss.
- ``chat`` (chat records): the tokenizer's own chat template; the loss covers the assistant turns (each with the
  template's end-of-turn text), the prompt at evaluation is the conversation up to the last assistant turn plus the
  template's generation prompt. The chat template writes its own bos, so none is added.
- ``text`` (plain text): no prompt, loss on every token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from smoa.tasks.records import Record

IGNORE_INDEX = -100
LossOn = Literal["response", "all"]

_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_INDENT = " " * 16


@dataclass(frozen=True)
class PromptTemplate:
    """How a record becomes model text, and how it is cut for training.

    Attributes:
        name: registry key.
        prompt_format: ``str.format`` pattern over ``instruction`` (and ``input``); what the model reads.
        response_format: pattern over ``output``; what the model must produce.
        loss_on: ``"response"`` (labels -100 on bos + prompt) or ``"all"`` (labels on every token).
        max_prompt_tokens: keep at most this many prompt tokens (bos included), cutting from the left.
        max_response_tokens: keep at most this many response tokens (eos included), cutting from the right.
        max_length: cap on the whole sequence, cut from the right (LLM-Adapters' ``cutoff_len``).
        prompt_format_with_input: the pattern for records with a non-empty ``input`` (Alpaca); default
            ``prompt_format``.
        chat: render ``record.messages`` with the tokenizer's chat template instead of the formats.
    """

    name: str
    prompt_format: str
    response_format: str = "{output}"
    loss_on: LossOn = "response"
    max_prompt_tokens: int | None = None
    max_response_tokens: int | None = None
    max_length: int | None = None
    prompt_format_with_input: str | None = None
    chat: bool = False

    def prompt(self, record: Record) -> str:
        """The prompt text (not for ``chat`` templates: see :func:`chat_segments`)."""
        pattern = self.prompt_format_with_input if record.input and self.prompt_format_with_input else None
        return (pattern or self.prompt_format).format(instruction=record.instruction, input=record.input)

    def response(self, record: Record) -> str:
        return self.response_format.format(output=record.output)

    def with_loss_on(self, loss_on: LossOn) -> PromptTemplate:
        if loss_on not in ("response", "all"):
            raise ValueError(f"loss_on must be 'response' or 'all', got {loss_on!r}")
        return replace(self, loss_on=loss_on)

    def with_max_length(self, max_length: int | None) -> PromptTemplate:
        """This template with another cap on the whole sequence (``None`` keeps the template's)."""
        return self if max_length is None else replace(self, max_length=max_length)


SMOA = PromptTemplate(
    name="smoa",
    prompt_format=_HEADER + "  \n\n### Instruction:\n{instruction}\n\n### Response:\n",
    loss_on="response",
    max_prompt_tokens=256,
    max_response_tokens=16,
)
DORA = PromptTemplate(
    name="dora",
    prompt_format=(
        _HEADER
        + " \n\n"
        + _INDENT
        + "### Instruction:\n"
        + _INDENT
        + "{instruction}\n"
        + _INDENT
        + "\n"
        + _INDENT
        + "### Response:\n"
        + _INDENT
    ),
    loss_on="all",
    max_length=256,
)
METAMATH = PromptTemplate(
    name="metamath",
    prompt_format=_HEADER + "\n\n### Instruction:\n{instruction}\n\n### Response: Let's think step by step.",
    response_format=" {output}",
    loss_on="response",
    max_length=512,
)
DIALOGUE = PromptTemplate(
    name="dialogue",
    prompt_format="CONTEXT: {instruction} TARGET:",
    response_format=" {output}",
    loss_on="response",
    max_length=512,
)
_ALPACA_INPUT_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA = PromptTemplate(
    name="alpaca",
    prompt_format=_HEADER + "\n\n### Instruction:\n{instruction}\n\n### Response:\n",
    prompt_format_with_input=_ALPACA_INPUT_HEADER + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
    "\n\n### Response:\n",
    loss_on="response",
    max_length=1024,
)
MEMORIZE = PromptTemplate(name="memorize", prompt_format="{instruction}=", loss_on="response", max_length=64)
CHAT = PromptTemplate(name="chat", prompt_format="", loss_on="response", max_length=1024, chat=True)
TEXT = PromptTemplate(name="text", prompt_format="", loss_on="all", max_length=1024)
TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t for t in (SMOA, DORA, METAMATH, DIALOGUE, ALPACA, MEMORIZE, CHAT, TEXT)
}
FORMAT_TEMPLATES = {"instruction": "alpaca", "chat": "chat", "text": "text"}  # own data: format → template


def get_template(name: str) -> PromptTemplate:
    """A template by name: one of :data:`TEMPLATES` (``smoa``, ``dora``, ``metamath``, ``dialogue`` ...)."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown prompt template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def bos_prefix(tokenizer) -> list[int]:
    """``[bos]`` when the tokenizer itself starts sequences with bos (Llama-2/3 do), else ``[]``.

    Following the tokenizer's own convention keeps each model's pretraining format: SmolLM2's declared bos is the
    chat token ``<|im_start|>``, which its tokenizer never prepends, so no bos is added for it.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def chat_segments(record: Record, tokenizer) -> list[tuple[str, bool]]:
    """A conversation as the tokenizer's chat template renders it, cut into consecutive pieces, each with whether
    it is an assistant turn (trained on). Concatenated, the pieces are the whole rendered conversation.

    Piece boundaries fall where the template's generation prompt ends: for assistant turn i the pieces before it
    render ``messages[:i]`` with ``add_generation_prompt=True`` and the turn is what ``messages[: i + 1]`` adds.

    Raises:
        ValueError: the tokenizer has no chat template, or its template does not render a conversation as a
            growing prefix (so the assistant turns cannot be told apart).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template, so chat records cannot be rendered; use a chat (instruct) model, or "
            "instruction records (data_format: instruction)"
        )
    messages = [{"role": role, "content": content} for role, content in record.messages]

    def render(turns: list[dict[str, str]], generation_prompt: bool) -> str:
        if not turns:
            return ""
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)

    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, (role, _) in enumerate(record.messages):
        if role != "assistant":
            continue
        before, after = render(messages[:index], True), render(messages[: index + 1], False)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError(
                f"record {record.uid}: the tokenizer's chat template does not render the conversation as a growing "
                "prefix, so its assistant turns cannot be located; use instruction records instead"
            )
        pieces += [(before[len(done) :], False), (after[len(before) :], True)]
        done = after
    rest = render(messages, False)[len(done) :]
    return [(text, trained) for text, trained in [*pieces, (rest, False)] if text]


def prompt_token_ids(record: Record, tokenizer, template: PromptTemplate) -> list[int]:
    """``bos + prompt`` token ids (bos as :func:`bos_prefix` decides), cut to ``template.max_prompt_tokens`` from the
    left (the end is kept). Chat: the conversation up to its last assistant turn, with the generation prompt."""
    if template.chat:
        pieces = chat_segments(record, tokenizer)
        last = max(i for i, (_, trained) in enumerate(pieces) if trained)
        return [token for text, _ in pieces[:last] for token in _ids(tokenizer, text)]
    ids = bos_prefix(tokenizer) + _ids(tokenizer, template.prompt(record))
    if template.max_prompt_tokens is not None and len(ids) > template.max_prompt_tokens:
        ids = ids[len(ids) - template.max_prompt_tokens :]
    return ids


def tokenize_for_training(
    record: Record, tokenizer, template: PromptTemplate = SMOA, loss_on: LossOn | None = None
) -> dict[str, list[int]]:
    """One training example: ``bos + prompt + response + eos`` with its labels.

    Args:
        record: the example.
        tokenizer: a Hugging Face tokenizer (bos is prepended when the tokenizer uses one; eos is appended).
        template: the prompt template (its caps are applied: prompt from the left, response and total from the right).
        loss_on: override the template's ``"response"`` / ``"all"``.

    Returns:
        ``{"input_ids", "labels", "attention_mask"}``, lists of equal length L; ``labels[i] = -100`` where no loss
        is taken (bos and prompt under ``"response"``), else ``labels[i] = input_ids[i]`` (the model shifts them).
    """
    loss_on = loss_on or template.loss_on
    if loss_on not in ("response", "all"):
        raise ValueError(f"loss_on must be 'response' or 'all', got {loss_on!r}")
    if template.chat:
        input_ids, labels = [], []
        for text, trained in chat_segments(record, tokenizer):
            ids = _ids(tokenizer, text)
            input_ids += ids
            labels += ids if trained or loss_on == "all" else [IGNORE_INDEX] * len(ids)
        if template.max_length is not None:
            input_ids, labels = input_ids[: template.max_length], labels[: template.max_length]
        return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}
    prompt = prompt_token_ids(record, tokenizer, template)
    response = _ids(tokenizer, template.response(record))
    if tokenizer.eos_token_id is not None:
        response.append(tokenizer.eos_token_id)
    if template.max_response_tokens is not None:
        response = response[: template.max_response_tokens]
    input_ids = prompt + response
    labels = ([IGNORE_INDEX] * len(prompt) if loss_on == "response" else list(prompt)) + list(response)
    if template.max_length is not None:
        input_ids, labels = input_ids[: template.max_length], labels[: template.max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def collate_for_training(
    features: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int, padding_side: Literal["left", "right"] = "right"
) -> dict[str, torch.Tensor]:
    """Pad a list of :func:`tokenize_for_training` outputs into a batch.

    Returns:
        ``input_ids`` (B, L) padded with ``pad_token_id``, ``labels`` (B, L) padded with -100, ``attention_mask``
        (B, L) with 0 on padding; L is the longest example. Right padding (default) keeps position ids of real
        tokens starting at 0 in models that do not derive them from the mask.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(f["input_ids"]) for f in features)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
    for feature in features:
        pad = length - len(feature["input_ids"])
        for key, fill in (("input_ids", pad_token_id), ("labels", IGNORE_INDEX), ("attention_mask", 0)):
            values = list(feature[key])
            batch[key].append([fill] * pad + values if padding_side == "left" else values + [fill] * pad)
    return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
