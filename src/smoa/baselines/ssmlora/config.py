"""Configuration of SSMLoRA (LoRA with a state-space recurrence, Yu et al., NAACL 2025)."""

from __future__ import annotations

from dataclasses import dataclass, field

from smoa.baselines.common import DenseAdapterConfig
from smoa.peft_integration import OutOfTreePeftType

SSMLORA = OutOfTreePeftType.SSMLORA


@dataclass
class SSMLoRAConfig(DenseAdapterConfig):
    """SSMLoRA: a LoRA whose rank-r code is mixed with a recurrent state carried across forward calls.

    Per call (``x: (B, L, d_in)``, state ``h: (B, L, r)`` from the previous call, zeros at first):
    ``u = x W_a``; ``h' = h W_c + u W_d + h``; ``ĥ = minmax(h')`` over the rank dimension;
    ``y = W0 x + α (u + LeakyReLU(dropout(ĥ))) W_b``; the state becomes ``ĥ`` (detached).
    ``W_a: (d_in, r)`` ~ N(0, 1/r); ``W_b: (r, d_out)``, ``W_c, W_d: (r, r)`` zeros. Scaling is α itself (not α/r).
    Trainable parameters: ``r (d_in + d_out) + 2 r²``. Not mergeable: the update is not a linear map of x.
    Defaults follow the authors' code: r = 8, α = 16, dropout 0.1 (on the state).
    """

    r: int = field(default=8, metadata={"help": "Rank r of W_a (d_in × r), W_b (r × d_out) and the r × r state maps."})
    lora_alpha: float = field(default=16.0, metadata={"help": "α, the output scaling (used as is, not divided by r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout probability on the normalised state ĥ."})
    init_lora_weights: bool = field(
        default=True,
        metadata={"help": "True: W_b = W_c = W_d = 0 (identity at start). False: all random (tests only)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SSMLORA
        self._validate_common()
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"SSMLoRAConfig.r must be a positive integer; got {self.r!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"SSMLoRAConfig.lora_dropout must be in [0, 1); got {self.lora_dropout}")
