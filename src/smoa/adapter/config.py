"""Configuration of the SMoA adapter (field names as in the authors' code, so their users can switch)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from smoa.peft_integration import OutOfTreePeftType

from .checkpoint import AdapterFileError, validate_adapter_dir
from .functional import PERMUTATIONS

PEFT_TYPE = OutOfTreePeftType.SMOA
FINGERPRINT_CHECKS = ("error", "warn", "off")
BIAS_OPTIONS = ("none", "all", "lora_only")


@dataclass
class SMoAConfig(PeftConfig):
    """Configuration of :class:`smoa.adapter.model.SMoAModel`.

    For a frozen weight ``W0 (d_out, d_in)`` the adapter learns, for each of ``num_blocks`` aligned diagonal blocks of
    the spectrally reordered matrix, ``ΔW[R_k, C_k] = (lora_alpha / r) · (B_k A_k) ⊙ W0[R_k, C_k]``.
    Trainable parameters per layer: ``Σ_k r_k (|R_k| + |C_k|) ≈ r (d_in + d_out) / num_blocks``.
    """

    r: int = field(
        default=8, metadata={"help": "Total rank budget r = Σ_k r_k over all blocks (also the scaling's r)."}
    )
    num_blocks: int = field(default=2, metadata={"help": "K, the number of aligned diagonal blocks per layer."})
    branch_ranks: list[int] | None = field(
        default=None,
        metadata={"help": "Per-block ranks r_k (length num_blocks, sum r). Default: r split evenly, remainder first."},
    )
    lora_alpha: float = field(default=8, metadata={"help": "Scaling numerator: scaling = lora_alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the branch input, in [0, 1)."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (exact or suffix match) or a regex to adapt, e.g. ['q_proj', 'v_proj']. "
            "'all-linear' targets every Linear/Conv1D except the output layer."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex to leave alone."}
    )
    fan_in_fan_out: bool = field(
        default=False,
        metadata={"help": "True when the layer stores its weight as (fan_in, fan_out), like GPT-2's Conv1D."},
    )
    bias: Literal["none", "all", "lora_only"] = field(
        default="none", metadata={"help": "Which biases to train: 'none', 'all' or 'lora_only' (adapted layers)."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules to train fully and save with the adapter (e.g. a new head)."}
    )
    init_lora_weights: bool = field(
        default=True,
        metadata={
            "help": "True: A_k Kaiming-uniform (a=√5), B_k zeros, so the adapter starts as the identity. "
            "False: B_k random too (not a no-op; for tests and debugging)."
        },
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt the layers with these indices (needs target_modules as a list)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the nn.ModuleList holding the layers, e.g. 'layers' or 'h'."}
    )
    permutation: Literal["spectral", "identity", "random"] = field(
        default="spectral",
        metadata={
            "help": "Row/column order before cutting blocks: 'spectral' (the method), 'identity' (contiguous "
            "blocks) or 'random' (seeded by permutation_seed); the latter two are the paper's ablations."
        },
    )
    permutation_seed: int = field(default=0, metadata={"help": "Seed of the 'random' permutation."})
    base_fingerprint_check: Literal["error", "warn", "off"] = field(
        default="error",
        metadata={
            "help": "On load, compare each base weight with the fingerprint saved with the adapter: 'error' "
            "refuses a different base, 'warn' only warns, 'off' skips the check."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        self._validate()
        # set by from_pretrained: the block orders will come from the saved adapter, so injection skips the SVD;
        # and the saved base fingerprint must be loaded (a missing one is an error, not the current base's)
        self._orders_from_checkpoint = False
        self._from_checkpoint = False

    def _validate(self) -> None:
        def bad(name: str, value: object, rule: str) -> ValueError:
            return ValueError(f"SMoAConfig.{name}={value!r} is invalid: {rule}")

        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise bad("r", self.r, "the total rank must be an integer >= 1")
        if not isinstance(self.num_blocks, int) or isinstance(self.num_blocks, bool) or self.num_blocks < 1:
            raise bad("num_blocks", self.num_blocks, "the number of blocks must be an integer >= 1")
        if self.branch_ranks is not None:
            ranks = list(self.branch_ranks)
            if len(ranks) != self.num_blocks:
                raise bad(
                    "branch_ranks", ranks, f"it needs one rank per block, i.e. num_blocks={self.num_blocks} values"
                )
            if any(not isinstance(x, int) or x < 1 for x in ranks):
                raise bad(
                    "branch_ranks", ranks, "every block needs an integer rank >= 1 (a rank-0 block learns nothing)"
                )
            if sum(ranks) != self.r:
                raise bad("branch_ranks", ranks, f"the ranks must sum to r={self.r} (they sum to {sum(ranks)})")
            self.branch_ranks = ranks
        elif self.r < self.num_blocks:
            raise bad(
                "r",
                self.r,
                f"with num_blocks={self.num_blocks} an even split leaves a block with rank 0; "
                f"use r >= {self.num_blocks} or fewer blocks",
            )
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)):
            raise bad("lora_alpha", self.lora_alpha, "it must be a number")
        if not math.isfinite(self.lora_alpha):
            raise bad("lora_alpha", self.lora_alpha, "it must be finite (scaling = lora_alpha / r)")
        if not (0.0 <= float(self.lora_dropout) < 1.0):
            raise bad("lora_dropout", self.lora_dropout, "dropout must lie in [0, 1)")
        if self.permutation not in PERMUTATIONS:
            raise bad("permutation", self.permutation, f"choose one of {PERMUTATIONS}")
        if self.base_fingerprint_check not in FINGERPRINT_CHECKS:
            raise bad("base_fingerprint_check", self.base_fingerprint_check, f"choose one of {FINGERPRINT_CHECKS}")
        if self.bias not in BIAS_OPTIONS:
            raise bad("bias", self.bias, f"choose one of {BIAS_OPTIONS}")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise bad("layers_to_transform", self.layers_to_transform, "it needs target_modules as a list, not a regex")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise bad("layers_pattern", self.layers_pattern, "it needs target_modules as a list, not a regex")

    @property
    def ranks(self) -> list[int]:
        """The per-block ranks r_k actually used."""
        from .functional import block_ranks

        return block_ranks(self.r, self.num_blocks, self.branch_ranks)

    @property
    def scaling(self) -> float:
        """``lora_alpha / r`` with r the total rank."""
        return float(self.lora_alpha) / self.r

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs) -> SMoAConfig:
        """Load a saved config; the adapter's saved block orders will then be used instead of a new SVD.

        A local adapter file next to the config is checked first, so a corrupted or mismatched file is named before
        any model is touched.
        """
        path = os.path.join(pretrained_model_name_or_path, subfolder) if subfolder else pretrained_model_name_or_path
        try:
            config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except (TypeError, ValueError) as err:
            raise AdapterFileError(f"{os.path.join(path, 'adapter_config.json')}: {err}") from None
        orders_saved = True
        if os.path.isdir(path):
            orders_saved = validate_adapter_dir(path, config)
        config._orders_from_checkpoint = orders_saved
        config._from_checkpoint = True  # the base fingerprint must come from the file, not from this base
        return config
