"""MeLoRA layer: the math as pure functions, and the tuner layer that holds one packed (A, B) pair per adapter.

The n mini-LoRAs of one adapter are stored packed: ``A = [A_1; …; A_n]`` of shape ``(Σ r_i, d_in/n)`` and
``B = [B_1, …, B_n]`` of shape ``(d_out/n, Σ r_i)``; mini i owns rows (of A) / columns (of B) ``o_i … o_i + r_i``
with ``o_i = r_1 + … + r_{i-1}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from smoa.baselines.common import DenseAdapterLayer, delta_dtype

from .config import MeLoRAConfig


def mini_slice_size(d: int, n: int, what: str, module_name: str) -> int:
    """``d / n``; raises when ``n`` does not divide ``d`` (MeLoRA's slices are equal and cover the whole layer)."""
    if d % n:
        divisors = [k for k in range(1, min(d, 64) + 1) if d % k == 0]
        raise ValueError(
            f"MeLoRA needs {what} of module {module_name!r} ({d}) divisible by n = len(r) = {n}; "
            f"choose n among the divisors of {d} (up to 64: {divisors})"
        )
    return d // n


def rank_offsets(ranks: Sequence[int]) -> list[int]:
    """Start index of each mini-LoRA in the packed tensors: ``o_i = Σ_{j<i} r_j``."""
    return [sum(ranks[:i]) for i in range(len(ranks))]


def melora_delta_weight(
    A: torch.Tensor, B: torch.Tensor, ranks: Sequence[int], scalings: Sequence[float]
) -> torch.Tensor:
    """``ΔW = blockdiag(s_1 B_1 A_1, …, s_n B_n A_n)``: ``(d_out, d_in)``; ``A: (Σr, d_in/n)``, ``B: (d_out/n, Σr)``."""
    blocks = [
        s * (B[:, o : o + r] @ A[o : o + r]) for o, r, s in zip(rank_offsets(ranks), ranks, scalings, strict=True)
    ]
    return torch.block_diag(*blocks)


def melora_output(
    x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, ranks: Sequence[int], scalings: Sequence[float]
) -> torch.Tensor:
    """``x ΔWᵀ`` without forming ΔW: slice i of the output is ``s_i (x_i A_iᵀ) B_iᵀ``, x_i the i-th input slice.

    ``x: (..., d_in)`` → ``(..., d_out)``.
    """
    n = len(ranks)
    slices = x.reshape(*x.shape[:-1], n, x.shape[-1] // n)
    outs = [
        s * ((slices[..., i, :] @ A[o : o + r].T) @ B[:, o : o + r].T)
        for i, (o, r, s) in enumerate(zip(rank_offsets(ranks), ranks, scalings, strict=True))
    ]
    return torch.cat(outs, dim=-1)


class MeLoRALayer(DenseAdapterLayer):
    """Dense layer with MeLoRA adapters: ``y = base(x) + melora_output(dropout(x))``."""

    method_name = "MeLoRA"
    adapter_layer_names = ("melora_A", "melora_B")
    other_param_names = ("dropout", "ranks", "scalings")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MeLoRAConfig, module_name: str = "") -> None:
        super().__init__(base_layer, module_name)
        self.melora_A = nn.ParameterDict({})
        self.melora_B = nn.ParameterDict({})
        self.ranks: dict[str, tuple[int, ...]] = {}
        self.scalings: dict[str, tuple[float, ...]] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: MeLoRAConfig) -> None:
        n = config.num_minis
        d_in = mini_slice_size(self.in_features, n, "in_features", self.module_name)
        d_out = mini_slice_size(self.out_features, n, "out_features", self.module_name)
        total = sum(config.r)
        self.ranks[adapter_name] = tuple(config.r)
        self.scalings[adapter_name] = tuple(config.scalings)
        self._set_dropout(adapter_name, config.lora_dropout)
        self.melora_A[adapter_name] = nn.Parameter(torch.empty(total, d_in))
        self.melora_B[adapter_name] = nn.Parameter(torch.empty(d_out, total))
        self.reset_parameters(adapter_name, config.init_lora_weights)
        self._finish_update(adapter_name)

    def reset_parameters(self, adapter_name: str, init_lora_weights: bool) -> None:
        """A_i Kaiming-uniform (a = √5, fan-in d_in/n, as each mini's nn.Linear); B_i = 0 (or Kaiming when False)."""
        nn.init.kaiming_uniform_(self.melora_A[adapter_name], a=math.sqrt(5))
        if init_lora_weights:
            nn.init.zeros_(self.melora_B[adapter_name])
        else:
            # per-mini fan-in is r_i; use the mini's own bound so every block is of the same order as real training
            B = self.melora_B[adapter_name]
            with torch.no_grad():
                for o, r in zip(rank_offsets(self.ranks[adapter_name]), self.ranks[adapter_name], strict=True):
                    nn.init.kaiming_uniform_(B[:, o : o + r], a=math.sqrt(5))

    def adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        return melora_output(
            self.dropout[adapter_name](x),
            self.melora_A[adapter_name],
            self.melora_B[adapter_name],
            self.ranks[adapter_name],
            self.scalings[adapter_name],
        )

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        A, B = self.melora_A[adapter_name], self.melora_B[adapter_name]
        dtype = delta_dtype(B)
        delta = melora_delta_weight(A.to(dtype), B.to(dtype), self.ranks[adapter_name], self.scalings[adapter_name])
        return delta.to(B.dtype)
