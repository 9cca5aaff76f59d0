"""The one registry of methods: each method's paper setting, budget knob and cost formulas (:mod:`.formulas`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from peft.config import PeftConfig

from . import formulas as f
from .specs import LayerShape, ModelSpec


class UnknownMethodError(ValueError):
    """A method name that the registry does not know."""


@dataclass(frozen=True)
class MethodSpec:
    """One method: its paper setting, the knob varied for matched budgets, and its cost formulas.

    ``layer_params`` / ``layer_rank`` apply to weight adapters (per dense layer); ``model_params`` to prompt learning
    (per model). ``with_knob(settings, value)`` returns the settings with the knob set (and tied values, e.g. α = 2r).
    ``knob_range(spec, layers, settings)`` bounds the knob; ``make_config(settings, targets, spec)`` builds the config.
    """

    name: str
    summary: str
    family: Literal["adapter", "prompt"]
    mergeable: bool
    paper: Mapping[str, Any]
    knob: str
    with_knob: Callable[[Mapping[str, Any], int], dict[str, Any]]
    knob_range: Callable[[ModelSpec, list[LayerShape], Mapping[str, Any]], tuple[int, int]]
    make_config: Callable[[Mapping[str, Any], list[str] | None, ModelSpec], PeftConfig]
    layer_params: Callable[[LayerShape, Mapping[str, Any]], int] | None = None
    layer_rank: Callable[[LayerShape, Mapping[str, Any]], int] | None = None
    model_params: Callable[[ModelSpec, Mapping[str, Any]], int] | None = None
    rank_note: str = ""
    pattern_fields: Mapping[str, str] | None = None

    def layer_settings(self, layer: LayerShape, settings: Mapping[str, Any]) -> Mapping[str, Any]:
        """``settings`` as seen by one layer: per-layer patterns (PEFT's ``rank_pattern`` matching) applied."""
        if not self.pattern_fields:
            return settings
        from peft.utils.other import get_pattern_key

        overrides = {}
        for setting, pattern_field in self.pattern_fields.items():
            pattern = settings.get(pattern_field) or {}
            key = get_pattern_key(pattern.keys(), layer.name)
            if key in pattern:
                overrides[setting] = pattern[key]
        return {**settings, **overrides} if overrides else settings

    def trainable_params(self, spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> int:
        if self.layer_params is not None:
            return sum(self.layer_params(layer, self.layer_settings(layer, settings)) for layer in layers)
        return self.model_params(spec, settings)


def _set(key: str, tie: Callable[[int], dict[str, Any]] | None = None):
    def with_knob(settings: Mapping[str, Any], value: int) -> dict[str, Any]:
        new = {**settings, key: value}
        if tie is not None:
            new.update(tie(value))
        return new

    return with_knob


#: Published settings. LoRA/DoRA: DoRA's commonsense recipe (r 32, α 64, dropout 0.05). HiRA: r 32, no dropout.
#: SMoA: r 32, K 2, α 32 (scaling 1), dropout 0.05. MeLoRA: the authors' LLaMA script (8 minis of rank 1, α 16).
#: MoRA: r 32, type 6 (type 1 as ``mora1``). SSMLoRA: the authors' defaults (r 8, α 16, dropout 0.1).
#: Prompt learning — Decision, no setting is published for these models: 20 virtual tokens (PEFT's examples),
#: P-tuning with an MLP encoder of width 128.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "smoa": {"r": 32, "num_blocks": 2, "lora_alpha": 32, "lora_dropout": 0.05},
    "lora": {"r": 32, "lora_alpha": 64, "lora_dropout": 0.05},
    "dora": {"r": 32, "lora_alpha": 64, "lora_dropout": 0.05, "use_dora": True},
    "hira": {"r": 32, "hira_dropout": 0.0},
    "melora": {"num_minis": 8, "mini_rank": 1, "lora_alpha": 16.0, "lora_dropout": 0.05},
    "mora": {"r": 32, "mora_type": 6, "lora_dropout": 0.05},
    "mora1": {"r": 32, "mora_type": 1, "lora_dropout": 0.05},
    "ssmlora": {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.1},
    "prompt_tuning": {"num_virtual_tokens": 20},
    "p_tuning": {"num_virtual_tokens": 20, "encoder_hidden_size": 128},
    "p_tuning_v2": {"num_virtual_tokens": 20},
}

_LORA_PATTERNS = {"r": "rank_pattern", "lora_alpha": "alpha_pattern"}

_REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "smoa", "SMoA: spectral diagonal blocks, ΔW_k = (α/r)(B_k A_k) ⊙ M_k", "adapter", True,
            PAPER_SETTINGS["smoa"], "r", _set("r", lambda r: {"lora_alpha": r}), f.smoa_range, f.smoa_config,
            layer_params=f.smoa_params, layer_rank=f.smoa_rank,
        ),
        MethodSpec(
            "lora", "LoRA (PEFT): ΔW = (α/r) B A", "adapter", True, PAPER_SETTINGS["lora"], "r",
            _set("r", lambda r: {"lora_alpha": 2 * r}), f.dense_rank_range, f.lora_config,
            layer_params=f.lora_params, layer_rank=f.lora_rank,
            pattern_fields=_LORA_PATTERNS,
        ),
        MethodSpec(
            "dora", "DoRA (PEFT use_dora): W = m (W0 + BA)/‖W0 + BA‖_col", "adapter", True, PAPER_SETTINGS["dora"],
            "r", _set("r", lambda r: {"lora_alpha": 2 * r}), f.dense_rank_range, f.lora_config,
            layer_params=f.dora_params, layer_rank=f.full_rank, rank_note="magnitude rescales all columns",
            pattern_fields=_LORA_PATTERNS,
        ),
        MethodSpec(
            "hira", "HiRA (PEFT): ΔW = W0 ⊙ (B A)", "adapter", True, PAPER_SETTINGS["hira"], "r", _set("r"),
            f.dense_rank_range, f.hira_config, layer_params=f.lora_params, layer_rank=f.full_rank,
            # no per-layer patterns: PEFT 0.21's HiRA dispatcher ignores rank_pattern for the layers it creates
        ),
        MethodSpec(
            "melora", "MeLoRA: n mini-LoRAs on contiguous diagonal blocks", "adapter", True,
            PAPER_SETTINGS["melora"], "mini_rank", _set("mini_rank"), f.melora_range, f.melora_config,
            layer_params=f.melora_params, layer_rank=f.melora_rank,
        ),
        MethodSpec(
            "mora", "MoRA type 6: square M on RoPE-rotated input chunks", "adapter", True, PAPER_SETTINGS["mora"],
            "r", _set("r"), f.mora_range, f.mora_config, layer_params=f.mora_params, layer_rank=f.mora_rank,
        ),
        MethodSpec(
            "mora1", "MoRA type 1: square M on the summed input chunks", "adapter", True, PAPER_SETTINGS["mora1"],
            "r", _set("r"), f.mora_range, f.mora_config, layer_params=f.mora_params, layer_rank=f.mora_rank,
        ),
        MethodSpec(
            "ssmlora", "SSMLoRA: LoRA code mixed with a recurrent state", "adapter", False,
            PAPER_SETTINGS["ssmlora"], "r", _set("r"), f.dense_rank_range, f.ssmlora_config,
            layer_params=f.ssmlora_params, layer_rank=f.ssmlora_rank, rank_note="nonlinear; output in span(W_b)",
        ),
        MethodSpec(
            "prompt_tuning", "Prompt tuning (PEFT): learned virtual-token embeddings", "prompt", False,
            PAPER_SETTINGS["prompt_tuning"], "num_virtual_tokens", _set("num_virtual_tokens"), f.positions_range,
            f.prompt_config("prompt"), model_params=f.prompt_params,
        ),
        MethodSpec(
            "p_tuning", "P-tuning (PEFT): virtual tokens through an MLP prompt encoder", "prompt", False,
            PAPER_SETTINGS["p_tuning"], "encoder_hidden_size", _set("encoder_hidden_size"), f.encoder_range,
            f.prompt_config("p"), model_params=f.p_tuning_params,
        ),
        MethodSpec(
            "p_tuning_v2", "P-tuning v2 (PEFT prefix tuning): key/value prefixes in every layer", "prompt", False,
            PAPER_SETTINGS["p_tuning_v2"], "num_virtual_tokens", _set("num_virtual_tokens"), f.positions_range,
            f.prompt_config("prefix"), model_params=f.prefix_params,
        ),
    )
}  # fmt: skip


def method_names() -> tuple[str, ...]:
    """Every registered method name, in table order."""
    return tuple(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The registry entry of ``name``; an unknown name raises listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(_REGISTRY)}") from None
