"""SSMLoRA layer: the state recurrence as pure functions, and the tuner layer holding W_a, W_b, W_c, W_d.

The recurrent state is runtime state, not a parameter: it lives in a plain dict on the layer (never saved), starts
at zero and is replaced after every forward call. ``SSMLoRAModel.reset_state()`` clears it (do so between
independent sequences or before comparing two models).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from smoa.baselines.common import DenseAdapterLayer, NotMergeableError, not_mergeable_message

from .config import SSMLoRAConfig

STATE_BATCH_FILL = 0.5  # value of the rows added when a batch is larger than the stored state (authors' choice)
MINMAX_EPS = 1e-8


def align_state(state: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Fit a stored state ``(B_s, L_s, r)`` to a call of shape ``(batch, length, r)``, as the authors' code does.

    Batch: more rows needed → append rows of 0.5; fewer → a random subset of rows. Length: longer state → a random
    subset of positions kept in order; shorter → zeros appended.
    """
    rows, positions, _ = state.shape
    if rows < batch:
        fill = torch.full((batch - rows, *state.shape[1:]), STATE_BATCH_FILL, dtype=state.dtype, device=state.device)
        state = torch.cat([state, fill], dim=0)
    elif rows > batch:
        state = state[torch.randperm(rows, device=state.device)[:batch]]
    if positions > length:
        keep = torch.randperm(positions, device=state.device)[:length].sort().values
        state = state[:, keep]
    elif positions < length:
        pad = torch.zeros(state.shape[0], length - positions, state.shape[2], dtype=state.dtype, device=state.device)
        state = torch.cat([state, pad], dim=1)
    return state


def ssm_state_update(h: torch.Tensor, u: torch.Tensor, W_c: torch.Tensor, W_d: torch.Tensor) -> torch.Tensor:
    """``minmax(h W_c + u W_d + h)`` with ``minmax(z) = (z − min z)/(max z − min z + 1e-8)`` over the last dim."""
    z = h @ W_c + u @ W_d + h
    low = z.min(dim=-1, keepdim=True).values
    high = z.max(dim=-1, keepdim=True).values
    return (z - low) / (high - low + MINMAX_EPS)


def ssmlora_output(
    u: torch.Tensor, state: torch.Tensor, W_b: torch.Tensor, alpha: float, dropout: nn.Module
) -> torch.Tensor:
    """``α (u + LeakyReLU(dropout(ĥ))) W_b``; ``u, ĥ: (..., r)``, ``W_b: (r, d_out)`` → ``(..., d_out)``."""
    return alpha * ((u + F.leaky_relu(dropout(state))) @ W_b)


class SSMLoRALayer(DenseAdapterLayer):
    """Dense layer with SSMLoRA adapters; each adapter keeps its own recurrent state."""

    method_name = "SSMLoRA"
    mergeable = False
    adapter_layer_names = ("ssmlora_A", "ssmlora_B", "ssmlora_C", "ssmlora_D")
    other_param_names = ("dropout", "alpha")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SSMLoRAConfig, module_name: str = "") -> None:
        super().__init__(base_layer, module_name)
        self.ssmlora_A = nn.ParameterDict({})
        self.ssmlora_B = nn.ParameterDict({})
        self.ssmlora_C = nn.ParameterDict({})
        self.ssmlora_D = nn.ParameterDict({})
        self.alpha: dict[str, float] = {}
        self.ssm_state: dict[str, torch.Tensor] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: SSMLoRAConfig) -> None:
        r = config.r
        self.alpha[adapter_name] = float(config.lora_alpha)
        self._set_dropout(adapter_name, config.lora_dropout)
        self.ssmlora_A[adapter_name] = nn.Parameter(torch.randn(self.in_features, r) / math.sqrt(r))
        if config.init_lora_weights:
            shapes = {"ssmlora_B": (r, self.out_features), "ssmlora_C": (r, r), "ssmlora_D": (r, r)}
            for name, shape in shapes.items():
                getattr(self, name)[adapter_name] = nn.Parameter(torch.zeros(shape))
        else:
            self.ssmlora_B[adapter_name] = nn.Parameter(torch.randn(r, self.out_features) / math.sqrt(r))
            self.ssmlora_C[adapter_name] = nn.Parameter(torch.randn(r, r) / r)
            self.ssmlora_D[adapter_name] = nn.Parameter(torch.randn(r, r) / r)
        self.ssm_state.pop(adapter_name, None)
        self._finish_update(adapter_name)

    def reset_state(self) -> None:
        """Forget the recurrent state of every adapter (the next call starts from zeros)."""
        self.ssm_state.clear()

    def adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        u = x @ self.ssmlora_A[adapter_name]
        # the recurrence runs over (batch, positions); 2-D inputs are one position, extra middle dims are flattened
        u3 = u.reshape(u.shape[0], -1, u.shape[-1]) if u.dim() != 2 else u[:, None, :]
        stored = self.ssm_state.get(adapter_name)
        if stored is None:
            stored = torch.zeros_like(u3)
        h = align_state(stored.to(device=u3.device, dtype=u3.dtype), u3.shape[0], u3.shape[1])
        new_state = ssm_state_update(h, u3, self.ssmlora_C[adapter_name], self.ssmlora_D[adapter_name])
        self.ssm_state[adapter_name] = new_state.detach()
        out = ssmlora_output(
            u3, new_state, self.ssmlora_B[adapter_name], self.alpha[adapter_name], self.dropout[adapter_name]
        )
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        raise NotMergeableError(not_mergeable_message(self.method_name))
