"""MoRA layer: compression, rotation, decompression and ΔW as pure functions, and the tuner layer holding M.

Index conventions (``d_in``, ``d_out`` the layer sizes, ``r̂`` the side of M, ``P = ⌈d_in/r̂⌉·r̂``): the padded input
is ``x_pad[p] = x[p mod d_in]`` for ``p < P`` (the input repeated cyclically), and output coordinate ``o`` reads the
decompressed vector at ``o mod r̂`` (type 1) or ``o mod P`` (type 6).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from smoa.baselines.common import DenseAdapterLayer, delta_dtype

from .config import MoRAConfig


def mora_rank(d_in: int, d_out: int, r: int, mora_type: int) -> int:
    """Side r̂ of the square matrix: ``⌊√((d_in + d_out)·r) + ½⌋``, rounded down to even for type 6 (RoPE pairs)."""
    r_hat = int(math.sqrt((d_in + d_out) * r) + 0.5)
    return r_hat // 2 * 2 if mora_type == 6 else r_hat


def num_chunks(d_in: int, r_hat: int) -> int:
    """``⌈d_in / r̂⌉``: how many chunks of r̂ the cyclically padded input has."""
    return -(-d_in // r_hat)


def rope_tables(chunks: int, r_hat: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``(chunks, r̂)``: angle ``b·θ_j`` for chunk b, ``θ_j = 10000^{-2j/r̂}``, j repeated twice."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, r_hat, 2, device=device, dtype=torch.float32) / r_hat))
    freqs = torch.outer(torch.arange(chunks, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(z: torch.Tensor) -> torch.Tensor:
    """``(z_a, z_b) ↦ (−z_b, z_a)`` on the last dimension (halves a, b): the RoPE partner of each coordinate."""
    half = z.shape[-1] // 2
    return torch.cat((-z[..., half:], z[..., :half]), dim=-1)


def mora_compress(x: torch.Tensor, r_hat: int, mora_type: int) -> torch.Tensor:
    """``x: (..., d_in)`` → type 1: ``(..., r̂)`` (sum of chunks); type 6: ``(..., chunks, r̂)`` (rotated chunks)."""
    d_in = x.shape[-1]
    chunks = num_chunks(d_in, r_hat)
    padded = x.index_select(-1, torch.arange(chunks * r_hat, device=x.device) % d_in)
    blocks = padded.reshape(*x.shape[:-1], chunks, r_hat)
    if mora_type == 1:
        return blocks.sum(dim=-2)
    cos, sin = rope_tables(chunks, r_hat, x.device)
    return blocks * cos.to(x.dtype) + rotate_half(blocks) * sin.to(x.dtype)


def mora_decompress(h: torch.Tensor, d_out: int, mora_type: int) -> torch.Tensor:
    """type 1: ``(..., r̂)`` tiled to ``(..., d_out)``; type 6: ``(..., chunks, r̂)`` flattened, cut/tiled to d_out."""
    flat = h if mora_type == 1 else h.flatten(-2)
    return flat.index_select(-1, torch.arange(d_out, device=h.device) % flat.shape[-1])


def mora_output(x: torch.Tensor, M: torch.Tensor, d_out: int, mora_type: int) -> torch.Tensor:
    """``decompress(M · compress(x))``, i.e. ``x ΔWᵀ``; ``x: (..., d_in)``, ``M: (r̂, r̂)`` → ``(..., d_out)``."""
    return mora_decompress(mora_compress(x, M.shape[0], mora_type) @ M.T, d_out, mora_type)


def mora_delta_weight(M: torch.Tensor, d_in: int, d_out: int, mora_type: int) -> torch.Tensor:
    """ΔW of shape ``(d_out, d_in)`` with ``mora_output(x) = x ΔWᵀ``.

    type 1: ``ΔW[o, c] = Σ_{p<P, p mod d_in = c} M[o mod r̂, p mod r̂]``.
    type 6: ``F = blockdiag(M R_0, …, M R_{chunks−1})`` (P × P) with ``M R_b = M diag(cos_b) + M H diag(sin_b)``,
    H the rotate-half matrix; then ``ΔW[o, c] = Σ_{p mod d_in = c} F[o mod P, p]``.
    """
    r_hat = M.shape[0]
    chunks = num_chunks(d_in, r_hat)
    padded = chunks * r_hat
    fold = torch.arange(padded, device=M.device) % d_in
    if mora_type == 1:
        shared = torch.zeros(r_hat, d_in, dtype=M.dtype, device=M.device)
        shared.index_add_(1, fold, M.index_select(1, torch.arange(padded, device=M.device) % r_hat))
        return shared.index_select(0, torch.arange(d_out, device=M.device) % r_hat)
    cos, sin = rope_tables(chunks, r_hat, M.device)
    half = r_hat // 2
    m_rotated = torch.cat((M[:, half:], -M[:, :half]), dim=1)  # M H: column j of M H is ±M[:, j ∓ r̂/2]
    blocks = M * cos.to(M.dtype)[:, None, :] + m_rotated * sin.to(M.dtype)[:, None, :]
    full = torch.block_diag(*blocks.unbind(0))
    folded = torch.zeros(padded, d_in, dtype=M.dtype, device=M.device).index_add_(1, fold, full)
    return folded.index_select(0, torch.arange(d_out, device=M.device) % padded)


class MoRALayer(DenseAdapterLayer):
    """Dense layer with MoRA adapters: ``y = base(x) + mora_output(dropout(x), M)``."""

    method_name = "MoRA"
    adapter_layer_names = ("mora_M",)
    other_param_names = ("dropout", "mora_type")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MoRAConfig, module_name: str = "") -> None:
        super().__init__(base_layer, module_name)
        self.mora_M = nn.ParameterDict({})
        self.mora_type: dict[str, int] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: MoRAConfig) -> None:
        r_hat = mora_rank(self.in_features, self.out_features, config.r, config.mora_type)
        self.mora_type[adapter_name] = config.mora_type
        self._set_dropout(adapter_name, config.lora_dropout)
        self.mora_M[adapter_name] = nn.Parameter(torch.empty(r_hat, r_hat))
        if config.init_lora_weights:
            nn.init.zeros_(self.mora_M[adapter_name])
        else:
            nn.init.kaiming_uniform_(self.mora_M[adapter_name], a=math.sqrt(5))
        self._finish_update(adapter_name)

    def adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        return mora_output(
            self.dropout[adapter_name](x), self.mora_M[adapter_name], self.out_features, self.mora_type[adapter_name]
        )

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        M = self.mora_M[adapter_name]
        delta = mora_delta_weight(
            M.to(delta_dtype(M)), self.in_features, self.out_features, self.mora_type[adapter_name]
        )
        return delta.to(M.dtype)
