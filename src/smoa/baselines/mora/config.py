"""Configuration of MoRA (high-rank updating with a square matrix, Jiang et al., arXiv 2405.12130)."""

from __future__ import annotations

from dataclasses import dataclass, field

from smoa.baselines.common import DenseAdapterConfig
from smoa.peft_integration import OutOfTreePeftType

MORA = OutOfTreePeftType.MORA
MORA_TYPES = (1, 6)


@dataclass
class MoRAConfig(DenseAdapterConfig):
    """MoRA: one trainable square matrix M (r̂ × r̂) per layer between a fixed compression and decompression.

    ``r̂ = ⌊√((d_in + d_out)·r) + ½⌋`` (the authors' code rounds to nearest), made even for type 6. The input is
    padded cyclically to ``P = ⌈d_in/r̂⌉·r̂`` and cut into chunks of r̂.

    - type 1 ("sharing", for large r): the chunks are summed, ``M`` applied, the r̂ outputs tiled to ``d_out``.
    - type 6 ("RoPE", for small r, the paper's default): chunk b is rotated RoPE-style by angle ``b·θ_j``
      (``θ_j = 10000^{-2j/r̂}``), ``M`` is applied to every chunk, and the concatenation (length P) is cut/tiled to
      ``d_out``; ``ΔW`` is block diagonal ``blockdiag(M R_b)`` up to the padding fold and the output tiling.

    No α (scaling 1); ``M`` starts at zero so the adapter starts as the identity. Trainable parameters: ``r̂²``.
    """

    r: int = field(
        default=8, metadata={"help": "LoRA-equivalent rank; the square matrix has side r̂ ≈ √((d_in+d_out)·r)."}
    )
    mora_type: int = field(
        default=6,
        metadata={"help": "6: RoPE-rotated chunks, block-diagonal update (small r); 1: shared sum (large r)."},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input."})
    init_lora_weights: bool = field(
        default=True, metadata={"help": "True: M = 0 (identity at start). False: random M (tests only)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MORA
        self._validate_common()
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"MoRAConfig.r must be a positive integer; got {self.r!r}")
        if self.mora_type not in MORA_TYPES:
            raise ValueError(
                f"MoRAConfig.mora_type must be one of {MORA_TYPES} (1: sharing, 6: RoPE); got {self.mora_type!r}"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"MoRAConfig.lora_dropout must be in [0, 1); got {self.lora_dropout}")
