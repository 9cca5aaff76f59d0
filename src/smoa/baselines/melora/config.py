"""Configuration of MeLoRA (Mini-Ensemble Low-Rank Adapters, Ren et al., arXiv 2402.17263)."""

from __future__ import annotations

from dataclasses import dataclass, field

from smoa.baselines.common import DenseAdapterConfig
from smoa.peft_integration import OutOfTreePeftType

MELORA = OutOfTreePeftType.MELORA


@dataclass
class MeLoRAConfig(DenseAdapterConfig):
    """MeLoRA: n mini-LoRAs on the n contiguous diagonal blocks of a dense layer.

    With ``n = len(r)``, the input and output are cut into n equal contiguous slices (``d_in/n``, ``d_out/n``) and
    ``ΔW = blockdiag(α_1/r_1 · B_1 A_1, …, α_n/r_n · B_n A_n)``, ``A_i: (r_i, d_in/n)`` Kaiming-uniform (a = √5),
    ``B_i: (d_out/n, r_i)`` zeros. Trainable parameters per layer: ``Σ_i r_i (d_in + d_out)/n``; update rank
    ``≤ Σ_i min(r_i, d_in/n, d_out/n)``. Defaults follow the authors' LLaMA-2-7B script: 8 minis of rank 1, α = 16.
    """

    r: list[int] = field(
        default_factory=lambda: [1] * 8,
        metadata={"help": "Rank of each mini-LoRA; its length is n, the number of diagonal blocks (e.g. [1]*8)."},
    )
    lora_alpha: list[float] | float = field(
        default=16.0,
        metadata={"help": "α_i of each mini-LoRA (a single number is used for all); mini i is scaled by α_i / r_i."},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input."})
    init_lora_weights: bool = field(
        default=True,
        metadata={"help": "True: B_i = 0, so the adapter starts as the identity. False: random B_i (tests only)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MELORA
        self._validate_common()
        if isinstance(self.r, int):
            raise ValueError(
                f"MeLoRAConfig.r must be a list of per-mini ranks (length n), e.g. [{self.r}] * 8; got {self.r}"
            )
        self.r = [int(v) for v in self.r]
        if not self.r or any(v < 1 for v in self.r):
            raise ValueError(f"MeLoRAConfig.r must be a non-empty list of positive ranks; got {self.r}")
        if isinstance(self.lora_alpha, (int, float)):
            self.lora_alpha = [float(self.lora_alpha)] * len(self.r)
        self.lora_alpha = [float(v) for v in self.lora_alpha]
        if len(self.lora_alpha) != len(self.r):
            raise ValueError(
                f"MeLoRAConfig.lora_alpha has {len(self.lora_alpha)} entries but r has {len(self.r)}; "
                "give one α per mini-LoRA or a single number"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"MeLoRAConfig.lora_dropout must be in [0, 1); got {self.lora_dropout}")

    @property
    def num_minis(self) -> int:
        """n, the number of mini-LoRAs (diagonal blocks)."""
        return len(self.r)

    @property
    def scalings(self) -> list[float]:
        """α_i / r_i for each mini-LoRA."""
        return [a / r for a, r in zip(self.lora_alpha, self.r, strict=True)]
