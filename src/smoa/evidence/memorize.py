"""Memorisation of random key → value pairs: the task where the rank of an update is known to matter.

A pair is two seeded random hex strings. The model reads ``key`` ``=`` and must produce ``value``; the loss is on the
value characters only, and the evaluation is on the training pairs themselves (memorising them is the task).

Every hex character is its own token (the tokenizer's single-character tokens ``0``–``9``, ``a``–``f``), so a
sequence is ``[key_1 … key_k, "=", value_1 … value_v]``, ``T = k + 1 + v`` tokens, the same layout for every pair.
Then token accuracy *is* character accuracy, and the teacher-forced argmax of every value position being right is
exactly the greedy decoding reproducing the value (by induction over the positions), so exact match is the greedy
exact match.

Shortcut for small machines (:func:`lower_layer_states`, :func:`top_layer_states`): with adapters on the top
``n`` decoder layers only, the frozen lower layers see the same tokens at every step, so their output is computed
once and the model is run from there. ``tests/evidence/test_memorize.py`` checks that this gives the loss of
the full forward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from smoa.tasks.memorize import HEX_DIGITS, make_pairs  # noqa: F401  (one generator for the task and the experiment)

SEPARATOR = "="


@dataclass(frozen=True)
class MemorizeData:
    """``n_pairs`` seeded random pairs, tokenised one character per token.

    Attributes:
        input_ids: ``(N, T)`` token ids, ``T = key_length + 1 + value_length``.
        value_positions: ``(v,)`` the positions whose logits predict the value characters (``k … k + v − 1``).
        targets: ``(N, v)`` the value tokens.
        pairs: the ``(key, value)`` strings.
    """

    pairs: tuple[tuple[str, str], ...]
    input_ids: torch.Tensor
    value_positions: torch.Tensor
    targets: torch.Tensor
    hex_token_ids: torch.Tensor

    @property
    def digest(self) -> str:
        """SHA-256 of the token ids: the data hash a result records."""
        return hashlib.sha256(self.input_ids.cpu().numpy().tobytes()).hexdigest()

    def to(self, device: torch.device | str) -> MemorizeData:
        """The same data with its tensors on ``device``."""
        from dataclasses import replace

        return replace(
            self,
            input_ids=self.input_ids.to(device),
            value_positions=self.value_positions.to(device),
            targets=self.targets.to(device),
            hex_token_ids=self.hex_token_ids.to(device),
        )


def character_token_ids(tokenizer) -> dict[str, int]:
    """The token id of every hex digit and of the separator; each must be a single token of the vocabulary."""
    ids = {}
    for char in HEX_DIGITS + SEPARATOR:
        encoded = tokenizer.encode(char, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the tokenizer splits {char!r} into {len(encoded)} tokens; memorize needs single tokens")
        ids[char] = encoded[0]
    return ids


def encode_pairs(pairs: Sequence[tuple[str, str]], tokenizer) -> MemorizeData:
    """Tokenise pairs one character per token (see the module docstring for the layout)."""
    ids = character_token_ids(tokenizer)
    rows = [[ids[c] for c in key] + [ids[SEPARATOR]] + [ids[c] for c in value] for key, value in pairs]
    input_ids = torch.tensor(rows, dtype=torch.long)
    key_length, value_length = len(pairs[0][0]), len(pairs[0][1])
    positions = torch.arange(key_length, key_length + value_length)
    return MemorizeData(
        pairs=tuple(pairs),
        input_ids=input_ids,
        value_positions=positions,
        targets=input_ids[:, positions + 1],
        hex_token_ids=torch.tensor([ids[c] for c in HEX_DIGITS]),
    )


def lower_layer_states(model: nn.Module, data: MemorizeData, first: int, batch_size: int = 64) -> torch.Tensor:
    """``(N, T, d)``: the input of decoder layer ``first`` for every pair (no gradient; computed once, shared)."""
    backbone = _backbone(model)
    if not 0 <= first < len(backbone.layers):
        raise ValueError(f"first layer {first} must be in 0..{len(backbone.layers) - 1}")
    with torch.no_grad():
        chunks = [
            backbone(data.input_ids[start : start + batch_size], output_hidden_states=True).hidden_states[first]
            for start in range(0, len(data.input_ids), batch_size)
        ]
    return torch.cat(chunks)


def top_layer_states(model: nn.Module, hidden: torch.Tensor, first: int, positions: torch.Tensor) -> torch.Tensor:
    """``(B, v, d)``: the final-norm states at ``positions``, running only layers ``first …`` on ``hidden``
    ``(B, T, d)`` (rows of :func:`lower_layer_states`). The model's own forward does the work, so the attention mask,
    rotary positions and norm are exactly those of the full forward."""
    backbone = _backbone(model)
    full = backbone.layers
    backbone.layers = full[first:]
    try:
        out = backbone(inputs_embeds=hidden)
    finally:
        backbone.layers = full
    return out.last_hidden_state[:, positions]


def _backbone(model: nn.Module) -> nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


def value_logits(model: nn.Module, hidden: torch.Tensor, vocab: torch.Tensor | None) -> torch.Tensor:
    """``(B, v, V')`` logits of the value positions over the whole vocabulary (``vocab`` None) or over ``vocab``."""
    head = model.get_output_embeddings()
    if vocab is None:
        return head(hidden)
    logits = hidden @ head.weight[vocab].T
    return logits if head.bias is None else logits + head.bias[vocab]


def value_targets(data: MemorizeData, rows: torch.Tensor, vocab: torch.Tensor | None) -> torch.Tensor:
    """``(B, v)`` targets as indices into the logits of :func:`value_logits`."""
    targets = data.targets[rows]
    if vocab is None:
        return targets
    index = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long, device=vocab.device)
    index[vocab] = torch.arange(len(vocab), device=vocab.device)
    return index[targets]


def full_forward_value_loss(model: nn.Module, data: MemorizeData, rows: torch.Tensor) -> torch.Tensor:
    """Reference: the mean value-token cross-entropy of the ordinary full forward (whole vocabulary)."""
    logits = model(input_ids=data.input_ids[rows]).logits[:, data.value_positions]
    return nn.functional.cross_entropy(logits.flatten(0, 1), data.targets[rows].flatten())
