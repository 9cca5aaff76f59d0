"""Each method's cost as a formula of the target layers' shapes, and its PEFT config.

Per adapted dense layer (``LayerShape``: ``d_in``, ``d_out``) a method has a trainable count (``*_params``), an
update-rank ceiling (``*_rank``) and the range its budget knob may take (``*_range``); prompt-learning methods count per
model. SMoA's count and ceiling are the adapter's own (:func:`smoa.adapter.functional.trainable_parameters`,
:func:`smoa.adapter.functional.rank_ceiling`); MoRA's square side is :func:`smoa.baselines.mora.mora_rank`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from peft.config import PeftConfig

from smoa.adapter import functional as F

from .specs import LayerShape, ModelSpec, UnsupportedTargetError


def melora_slices(layer: LayerShape, n: int) -> tuple[int, int]:
    if layer.d_in % n or layer.d_out % n:
        raise UnsupportedTargetError(
            f"MeLoRA with n={n} mini-LoRAs cannot adapt {layer.name!r} ({layer.d_out}×{layer.d_in}): n must divide "
            "both sizes; choose another n"
        )
    return layer.d_in // n, layer.d_out // n


def dense_rank_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    return 1, min(min(layer.d_in, layer.d_out) for layer in layers)


def lora_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def hira_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from peft import HiraConfig

    return HiraConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def smoa_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from smoa.adapter import SMoAConfig

    return SMoAConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def smoa_ranks(settings: Mapping[str, Any]) -> list[int]:
    """SMoA's per-block ranks ``r_k`` for the settings (``branch_ranks`` or ``r`` split over ``num_blocks``)."""
    return F.block_ranks(settings["r"], settings["num_blocks"], settings.get("branch_ranks") or None)


def smoa_params(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return F.trainable_parameters(layer.d_out, layer.d_in, smoa_ranks(s))


def smoa_rank(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return F.rank_ceiling(layer.d_out, layer.d_in, smoa_ranks(s))


def smoa_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    return settings["num_blocks"], min(min(layer.d_in, layer.d_out) for layer in layers)


def melora_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from smoa.baselines import MeLoRAConfig

    n = settings["num_minis"]
    return MeLoRAConfig(
        task_type="CAUSAL_LM",
        target_modules=targets,
        r=[settings["mini_rank"]] * n,
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"],
    )


def melora_params(layer: LayerShape, settings: Mapping[str, Any]) -> int:
    d_in, d_out = melora_slices(layer, settings["num_minis"])
    return settings["num_minis"] * settings["mini_rank"] * (d_in + d_out)


def melora_rank(layer: LayerShape, settings: Mapping[str, Any]) -> int:
    d_in, d_out = melora_slices(layer, settings["num_minis"])
    return settings["num_minis"] * min(settings["mini_rank"], d_in, d_out)


def melora_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    return 1, min(min(melora_slices(layer, settings["num_minis"])) for layer in layers)


def mora_rank_side(layer: LayerShape, r: int, mora_type: int) -> int:
    """MoRA's square side r̂ on one layer (:func:`smoa.baselines.mora.mora_rank`)."""
    from smoa.baselines.mora import mora_rank

    return mora_rank(layer.d_in, layer.d_out, r, mora_type)


def mora_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from smoa.baselines import MoRAConfig

    return MoRAConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def mora_params(layer: LayerShape, settings: Mapping[str, Any]) -> int:
    return mora_rank_side(layer, settings["r"], settings["mora_type"]) ** 2


def mora_rank(layer: LayerShape, settings: Mapping[str, Any]) -> int:
    if settings["mora_type"] == 1:
        return min(mora_rank_side(layer, settings["r"], 1), layer.d_in, layer.d_out)
    return min(layer.d_in, layer.d_out)


def mora_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    # largest r whose square matrix still fits inside every target layer (r̂ ≤ min(d_in, d_out))
    return 1, max(1, min(min(lay.d_in, lay.d_out) ** 2 // (lay.d_in + lay.d_out) for lay in layers))


def ssmlora_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from smoa.baselines import SSMLoRAConfig

    return SSMLoRAConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def ssmlora_params(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return s["r"] * (layer.d_in + layer.d_out) + 2 * s["r"] ** 2


def ssmlora_rank(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return min(s["r"], layer.d_out)


def prompt_config(kind: str) -> Callable[[Mapping[str, Any], list[str] | None, ModelSpec], PeftConfig]:
    def make(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
        import peft

        cls = {"prompt": peft.PromptTuningConfig, "p": peft.PromptEncoderConfig, "prefix": peft.PrefixTuningConfig}
        return cls[kind](task_type="CAUSAL_LM", **settings)

    return make


def prompt_dims(spec: ModelSpec, config: PeftConfig) -> PeftConfig:
    """The prompt-learning config completed from the model config exactly as PEFT does (token_dim, num_layers)."""
    from peft.utils.other import _prepare_prompt_learning_config

    return _prepare_prompt_learning_config(replace(config), spec.config.to_dict())


def prompt_params(spec: ModelSpec, settings: Mapping[str, Any]) -> int:
    config = prompt_dims(spec, prompt_config("prompt")(settings, None, spec))
    return config.num_virtual_tokens * config.token_dim


def p_tuning_params(spec: ModelSpec, settings: Mapping[str, Any]) -> int:
    config = prompt_dims(spec, prompt_config("p")(settings, None, spec))
    d, h = config.token_dim, config.encoder_hidden_size
    return config.num_virtual_tokens * d + (d * h + h) + (h * h + h) + (h * d + d)


def prefix_params(spec: ModelSpec, settings: Mapping[str, Any]) -> int:
    config = prompt_dims(spec, prompt_config("prefix")(settings, None, spec))
    return config.num_virtual_tokens * config.num_layers * 2 * config.token_dim


def positions_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    # virtual tokens share the context window with the input; leave room for one real token
    return 1, int(getattr(spec.config, "max_position_embeddings", 4096)) - 1


def encoder_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    return 1, 4 * int(spec.config.hidden_size)


def lora_params(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return s["r"] * (layer.d_in + layer.d_out)


def lora_rank(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return min(s["r"], layer.d_in, layer.d_out)


def dora_params(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return s["r"] * (layer.d_in + layer.d_out) + layer.d_out


def full_rank(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return min(layer.d_in, layer.d_out)
