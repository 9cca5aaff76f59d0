"""The one registry of methods: a method name → its PEFT config for a model and a budget, and what it costs.

Every method of the paper's comparison is here: ``smoa`` (the method), PEFT's built-ins ``lora``, ``dora``, ``hira``,
``prompt_tuning``, ``p_tuning``, ``p_tuning_v2`` (PEFT's prefix tuning), and the out-of-tree baselines ``melora``,
``mora`` (type 6), ``mora1`` (type 1) and ``ssmlora`` (``smoa.baselines``).

Budgets:

- ``"paper"``: each method's published setting (``PAPER_SETTINGS`` below, on the SMoA paper's targets
  q_proj, k_proj, v_proj, up_proj, down_proj for the weight adapters).
- ``"matched"``: one hyperparameter per method (its *knob*: a rank, a number of virtual tokens, an encoder width) is
  chosen so the trainable count is closest to a target (default: SMoA's paper budget on that model). The plan
  reports the achieved count; it is within ±2% whenever the knob's granularity allows, and a target outside the
  method's whole range raises ``BudgetUnreachableError``.

Counting is analytic, from the target layers' shapes, so it works on a model built on the meta device from its
config alone (``load_model_spec("llama-2-7b")``): no weights are needed. Per adapted dense layer
``W: (d_out, d_in)``:

| method | trainable | update-rank ceiling |
|---|---|---|
| LoRA, HiRA | r (d_in + d_out) | LoRA: min(r, d_in, d_out); HiRA (W0 ⊙ BA): min(d_in, d_out) |
| DoRA | r (d_in + d_out) + d_out | min(d_in, d_out) (the magnitude rescales every column) |
| SMoA | Σ_k r_k (|R_k| + |C_k|) | Σ_k min(|R_k|, |C_k|, r_k · min(|R_k|, |C_k|)) |
| MeLoRA | Σ_i r_i (d_in + d_out) / n | Σ_i min(r_i, d_in/n, d_out/n) |
| MoRA | r̂², r̂ = ⌊√((d_in+d_out) r) + ½⌋ (even for type 6) | type 1: min(r̂, d_in, d_out); type 6: min(d_in, d_out) |
| SSMLoRA | r (d_in + d_out) + 2 r² | r (output in span W_b; not a linear update) |

Prompt learning (d = hidden size, n virtual tokens, L layers, d_kv = key/value width): prompt tuning ``n d``;
P-tuning ``n d + (d h + h) + (h² + h) + (h d + d)`` (MLP encoder of width h); prefix tuning ``n · L · 2 · d_kv``.
Params% as the papers print it: ``100 · trainable / (base + trainable)``.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from peft.config import PeftConfig
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.pytorch_utils import Conv1D

Budget = Literal["paper", "matched"]
BUDGETS: tuple[str, ...] = ("paper", "matched")
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
DEFAULT_TOLERANCE = 0.02
NAMED_MODELS: dict[str, str] = {
    "smollm2-135m": "smollm2-135m.json",
    "llama-2-7b": "llama-2-7b.json",
    "llama-3-8b": "llama-3-8b.json",
}
DENSE_TYPES = ("Linear", "Conv1D")


class UnknownMethodError(ValueError):
    """A method name that the registry does not know."""


class BudgetUnreachableError(ValueError):
    """No configuration of the method has a trainable count within tolerance of the target."""


class UnsupportedTargetError(ValueError):
    """A target module is of a layer type the method cannot adapt, or no module matches the targets."""


# ------------------------------------------------------------------------------------------------- model shapes --
@dataclass(frozen=True)
class LayerShape:
    """One module of the model that could be targeted: path, short name, type and (for dense layers) sizes."""

    name: str
    kind: str
    layer_type: str
    d_in: int
    d_out: int


@dataclass(frozen=True)
class ModelSpec:
    """What the registry needs to know about a base model; built without weights (meta device) when needed."""

    name: str
    config: PretrainedConfig
    base_params: int
    layers: tuple[LayerShape, ...]

    def select(self, target_modules: Sequence[str] | str) -> list[LayerShape]:
        """The modules PEFT would target: exact or ``.``-suffix match of a name in the list, or a full regex match."""
        if isinstance(target_modules, str):
            chosen = [layer for layer in self.layers if re.fullmatch(target_modules, layer.name)]
        else:
            names = set(target_modules)
            chosen = [
                layer
                for layer in self.layers
                if layer.name in names or any(layer.name.endswith("." + key) for key in names)
            ]
        if not chosen:
            kinds = sorted({layer.kind for layer in self.layers if layer.layer_type in DENSE_TYPES})
            raise UnsupportedTargetError(
                f"no module of {self.name} matches target_modules={target_modules!r}; its dense layers are named "
                f"{kinds}"
            )
        return chosen


def _layer_shape(name: str, module: nn.Module) -> LayerShape | None:
    kind = name.rsplit(".", 1)[-1]
    if isinstance(module, nn.Linear):
        return LayerShape(name, kind, "Linear", module.in_features, module.out_features)
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return LayerShape(name, kind, "Conv1D", int(d_in), int(d_out))
    if next(module.parameters(recurse=False), None) is not None:
        return LayerShape(name, kind, type(module).__name__, 0, 0)
    return None


def model_spec_from_module(model: nn.Module, name: str | None = None) -> ModelSpec:
    """Spec of a built model (real or meta weights); tied parameters are counted once."""
    layers = tuple(
        shape for module_name, module in model.named_modules() if (shape := _layer_shape(module_name, module))
    )
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"model {type(model).__name__} has no transformers config; the registry needs one")
    base = sum(p.numel() for p in model.parameters())
    return ModelSpec(name or getattr(config, "name_or_path", "") or type(model).__name__, config, base, layers)


def named_model_config(name: str) -> PretrainedConfig:
    """The config of a named model shipped in ``smoa/model_configs`` (``smollm2-135m``, ``llama-2-7b``, ...)."""
    path = importlib.resources.files("smoa") / "model_configs" / NAMED_MODELS[name]
    data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    return AutoConfig.for_model(**data)


def load_model_spec(model: str | Path | PretrainedConfig | nn.Module | ModelSpec) -> ModelSpec:
    """A ``ModelSpec`` from a named config, a Hugging Face directory, a config, or a model.

    Configs are instantiated with ``AutoModelForCausalLM.from_config`` on the meta device: shapes only, no memory.
    """
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, nn.Module):
        return model_spec_from_module(model)
    name = None
    if isinstance(model, (str, Path)):
        key = str(model).lower()
        if key in NAMED_MODELS:
            name, config = key, named_model_config(key)
        elif Path(model).is_dir():
            name, config = str(model), AutoConfig.from_pretrained(str(model))
        else:
            raise ValueError(
                f"model {str(model)!r} is neither a named config ({', '.join(NAMED_MODELS)}) nor a directory with a "
                "Hugging Face config.json"
            )
    else:
        config = model
    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(config)
    return model_spec_from_module(meta_model, name or getattr(config, "name_or_path", None) or config.model_type)


# ------------------------------------------------------------------------------------------- per-layer formulas --
def split_sizes(n: int, k: int) -> list[int]:
    """Chunk sizes of ``torch.tensor_split(range(n), k)``: the first ``n mod k`` chunks get one extra."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def smoa_layer_params(d_in: int, d_out: int, ranks: Sequence[int]) -> int:
    """``Σ_k r_k (|R_k| + |C_k|)`` with ``R = split(d_out, K)``, ``C = split(d_in, K)``, ``K = len(ranks)``."""
    rows, cols = split_sizes(d_out, len(ranks)), split_sizes(d_in, len(ranks))
    return sum(r * (R + C) for r, R, C in zip(ranks, rows, cols, strict=True))


def smoa_layer_rank(d_in: int, d_out: int, ranks: Sequence[int]) -> int:
    """``Σ_k min(|R_k|, |C_k|, r_k · min(|R_k|, |C_k|))`` (full-rank anchors)."""
    rows, cols = split_sizes(d_out, len(ranks)), split_sizes(d_in, len(ranks))
    return sum(min(R, C, r * min(R, C)) for r, R, C in zip(ranks, rows, cols, strict=True))


def smoa_ranks(r: int, num_blocks: int, branch_ranks: Sequence[int] | None = None) -> list[int]:
    """Per-block ranks: ``branch_ranks`` if given, else r split evenly with the remainder to the first blocks."""
    return list(branch_ranks) if branch_ranks else split_sizes(r, num_blocks)


def mora_side(d_in: int, d_out: int, r: int, mora_type: int) -> int:
    """r̂ of MoRA (see ``smoa.baselines.mora.mora_rank``; repeated here so counting needs no torch module)."""
    from smoa.baselines.mora import mora_rank

    return mora_rank(d_in, d_out, r, mora_type)


def _melora_slices(layer: LayerShape, n: int) -> tuple[int, int]:
    if layer.d_in % n or layer.d_out % n:
        raise UnsupportedTargetError(
            f"MeLoRA with n={n} mini-LoRAs cannot adapt {layer.name!r} ({layer.d_out}×{layer.d_in}): n must divide "
            "both sizes; choose another n"
        )
    return layer.d_in // n, layer.d_out // n


# ------------------------------------------------------------------------------------------------- the registry --
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


def _dense_rank_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    return 1, min(min(layer.d_in, layer.d_out) for layer in layers)


def _lora_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def _hira_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from peft import HiraConfig

    return HiraConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def _smoa_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from smoa.adapter import SMoAConfig

    return SMoAConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def _smoa_ranks_of(settings: Mapping[str, Any]) -> list[int]:
    return smoa_ranks(settings["r"], settings["num_blocks"], settings.get("branch_ranks"))


def _smoa_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    return settings["num_blocks"], min(min(layer.d_in, layer.d_out) for layer in layers)


def _melora_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from smoa.baselines import MeLoRAConfig

    n = settings["num_minis"]
    return MeLoRAConfig(
        task_type="CAUSAL_LM",
        target_modules=targets,
        r=[settings["mini_rank"]] * n,
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"],
    )


def _melora_params(layer: LayerShape, settings: Mapping[str, Any]) -> int:
    d_in, d_out = _melora_slices(layer, settings["num_minis"])
    return settings["num_minis"] * settings["mini_rank"] * (d_in + d_out)


def _melora_rank(layer: LayerShape, settings: Mapping[str, Any]) -> int:
    d_in, d_out = _melora_slices(layer, settings["num_minis"])
    return settings["num_minis"] * min(settings["mini_rank"], d_in, d_out)


def _melora_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    return 1, min(min(_melora_slices(layer, settings["num_minis"])) for layer in layers)


def _mora_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from smoa.baselines import MoRAConfig

    return MoRAConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def _mora_params(layer: LayerShape, settings: Mapping[str, Any]) -> int:
    return mora_side(layer.d_in, layer.d_out, settings["r"], settings["mora_type"]) ** 2


def _mora_rank(layer: LayerShape, settings: Mapping[str, Any]) -> int:
    if settings["mora_type"] == 1:
        return min(mora_side(layer.d_in, layer.d_out, settings["r"], 1), layer.d_in, layer.d_out)
    return min(layer.d_in, layer.d_out)


def _mora_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    # largest r whose square matrix still fits inside every target layer (r̂ ≤ min(d_in, d_out))
    return 1, max(1, min(min(lay.d_in, lay.d_out) ** 2 // (lay.d_in + lay.d_out) for lay in layers))


def _ssmlora_config(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
    from smoa.baselines import SSMLoRAConfig

    return SSMLoRAConfig(task_type="CAUSAL_LM", target_modules=targets, **settings)


def _prompt_config(kind: str) -> Callable[[Mapping[str, Any], list[str] | None, ModelSpec], PeftConfig]:
    def make(settings: Mapping[str, Any], targets: list[str] | None, spec: ModelSpec) -> PeftConfig:
        import peft

        cls = {"prompt": peft.PromptTuningConfig, "p": peft.PromptEncoderConfig, "prefix": peft.PrefixTuningConfig}
        return cls[kind](task_type="CAUSAL_LM", **settings)

    return make


def prompt_dims(spec: ModelSpec, config: PeftConfig) -> PeftConfig:
    """The prompt-learning config completed from the model config exactly as PEFT does (token_dim, num_layers)."""
    from peft.utils.other import _prepare_prompt_learning_config

    return _prepare_prompt_learning_config(replace(config), spec.config.to_dict())


def _prompt_params(spec: ModelSpec, settings: Mapping[str, Any]) -> int:
    config = prompt_dims(spec, _prompt_config("prompt")(settings, None, spec))
    return config.num_virtual_tokens * config.token_dim


def _p_tuning_params(spec: ModelSpec, settings: Mapping[str, Any]) -> int:
    config = prompt_dims(spec, _prompt_config("p")(settings, None, spec))
    d, h = config.token_dim, config.encoder_hidden_size
    return config.num_virtual_tokens * d + (d * h + h) + (h * h + h) + (h * d + d)


def _prefix_params(spec: ModelSpec, settings: Mapping[str, Any]) -> int:
    config = prompt_dims(spec, _prompt_config("prefix")(settings, None, spec))
    return config.num_virtual_tokens * config.num_layers * 2 * config.token_dim


def _positions_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    # virtual tokens share the context window with the input; leave room for one real token
    return 1, int(getattr(spec.config, "max_position_embeddings", 4096)) - 1


def _encoder_range(spec: ModelSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> tuple[int, int]:
    return 1, 4 * int(spec.config.hidden_size)


def _lora_params(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return s["r"] * (layer.d_in + layer.d_out)


def _dora_params(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return s["r"] * (layer.d_in + layer.d_out) + layer.d_out


def _full_rank(layer: LayerShape, s: Mapping[str, Any]) -> int:
    return min(layer.d_in, layer.d_out)


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
            PAPER_SETTINGS["smoa"], "r", _set("r", lambda r: {"lora_alpha": r}), _smoa_range, _smoa_config,
            layer_params=lambda lay, s: smoa_layer_params(lay.d_in, lay.d_out, _smoa_ranks_of(s)),
            layer_rank=lambda lay, s: smoa_layer_rank(lay.d_in, lay.d_out, _smoa_ranks_of(s)),
        ),
        MethodSpec(
            "lora", "LoRA (PEFT): ΔW = (α/r) B A", "adapter", True, PAPER_SETTINGS["lora"], "r",
            _set("r", lambda r: {"lora_alpha": 2 * r}), _dense_rank_range, _lora_config,
            layer_params=_lora_params, layer_rank=lambda lay, s: min(s["r"], lay.d_in, lay.d_out),
            pattern_fields=_LORA_PATTERNS,
        ),
        MethodSpec(
            "dora", "DoRA (PEFT use_dora): W = m (W0 + BA)/‖W0 + BA‖_col", "adapter", True, PAPER_SETTINGS["dora"],
            "r", _set("r", lambda r: {"lora_alpha": 2 * r}), _dense_rank_range, _lora_config,
            layer_params=_dora_params, layer_rank=_full_rank, rank_note="magnitude rescales all columns",
            pattern_fields=_LORA_PATTERNS,
        ),
        MethodSpec(
            "hira", "HiRA (PEFT): ΔW = W0 ⊙ (B A)", "adapter", True, PAPER_SETTINGS["hira"], "r", _set("r"),
            _dense_rank_range, _hira_config, layer_params=_lora_params, layer_rank=_full_rank,
            # no per-layer patterns: PEFT 0.21's HiRA dispatcher ignores rank_pattern for the layers it creates
        ),
        MethodSpec(
            "melora", "MeLoRA: n mini-LoRAs on contiguous diagonal blocks", "adapter", True,
            PAPER_SETTINGS["melora"], "mini_rank", _set("mini_rank"), _melora_range, _melora_config,
            layer_params=_melora_params, layer_rank=_melora_rank,
        ),
        MethodSpec(
            "mora", "MoRA type 6: square M on RoPE-rotated input chunks", "adapter", True, PAPER_SETTINGS["mora"],
            "r", _set("r"), _mora_range, _mora_config, layer_params=_mora_params, layer_rank=_mora_rank,
        ),
        MethodSpec(
            "mora1", "MoRA type 1: square M on the summed input chunks", "adapter", True, PAPER_SETTINGS["mora1"],
            "r", _set("r"), _mora_range, _mora_config, layer_params=_mora_params, layer_rank=_mora_rank,
        ),
        MethodSpec(
            "ssmlora", "SSMLoRA: LoRA code mixed with a recurrent state", "adapter", False,
            PAPER_SETTINGS["ssmlora"], "r", _set("r"), _dense_rank_range, _ssmlora_config,
            layer_params=lambda lay, s: s["r"] * (lay.d_in + lay.d_out) + 2 * s["r"] ** 2,
            layer_rank=lambda lay, s: min(s["r"], lay.d_out), rank_note="nonlinear; output in span(W_b)",
        ),
        MethodSpec(
            "prompt_tuning", "Prompt tuning (PEFT): learned virtual-token embeddings", "prompt", False,
            PAPER_SETTINGS["prompt_tuning"], "num_virtual_tokens", _set("num_virtual_tokens"), _positions_range,
            _prompt_config("prompt"), model_params=_prompt_params,
        ),
        MethodSpec(
            "p_tuning", "P-tuning (PEFT): virtual tokens through an MLP prompt encoder", "prompt", False,
            PAPER_SETTINGS["p_tuning"], "encoder_hidden_size", _set("encoder_hidden_size"), _encoder_range,
            _prompt_config("p"), model_params=_p_tuning_params,
        ),
        MethodSpec(
            "p_tuning_v2", "P-tuning v2 (PEFT prefix tuning): key/value prefixes in every layer", "prompt", False,
            PAPER_SETTINGS["p_tuning_v2"], "num_virtual_tokens", _set("num_virtual_tokens"), _positions_range,
            _prompt_config("prefix"), model_params=_prefix_params,
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


# ------------------------------------------------------------------------------------------------------ planning --
@dataclass(frozen=True)
class MethodPlan:
    """A method configured for a model and a budget, with its cost. ``peft_config()`` builds the PEFT config."""

    method: str
    budget: str
    model: str
    settings: dict[str, Any]
    target_modules: tuple[str, ...] | None
    trainable_params: int
    base_params: int
    rank_ceilings: dict[str, int] = field(default_factory=dict)
    mergeable: bool = True
    target_params: int | None = None
    spec: ModelSpec | None = field(default=None, repr=False, compare=False)

    @property
    def params_percent(self) -> float:
        """``100 · trainable / (base + trainable)``, the Params% of the papers' tables."""
        return 100.0 * self.trainable_params / (self.base_params + self.trainable_params)

    @property
    def deviation(self) -> float | None:
        """``(trainable − target) / target`` for matched budgets, else None."""
        if self.target_params is None:
            return None
        return (self.trainable_params - self.target_params) / self.target_params

    def peft_config(self) -> PeftConfig:
        """The PEFT config of this plan (SMoA's needs ``smoa.adapter``; the baselines register on import)."""
        import smoa.baselines  # noqa: F401  (registers MeLoRA, MoRA, SSMLoRA with PEFT)

        method = get_method(self.method)
        targets = list(self.target_modules) if self.target_modules is not None else None
        return method.make_config(self.settings, targets, self.spec)


def _resolve_layers(method: MethodSpec, spec: ModelSpec, target_modules: Sequence[str] | str) -> list[LayerShape]:
    layers = spec.select(target_modules)
    for layer in layers:
        if layer.layer_type not in DENSE_TYPES:
            raise UnsupportedTargetError(
                f"{method.name} cannot adapt module {layer.name!r} of type {layer.layer_type}: the registry plans "
                f"weight adapters for {' and '.join(DENSE_TYPES)} layers only. Remove {layer.kind!r} from "
                "target_modules"
            )
    return layers


def _rank_ceilings(method: MethodSpec, layers: list[LayerShape], settings: Mapping[str, Any]) -> dict[str, int]:
    ceilings: dict[str, int] = {}
    for layer in layers:
        rank = method.layer_rank(layer, method.layer_settings(layer, settings))
        ceilings[layer.kind] = max(rank, ceilings.get(layer.kind, 0))
    return ceilings


def _make_plan(
    method: MethodSpec,
    spec: ModelSpec,
    budget: str,
    settings: dict[str, Any],
    layers: list[LayerShape],
    targets: tuple[str, ...] | None,
    target_params: int | None,
) -> MethodPlan:
    return MethodPlan(
        method=method.name,
        budget=budget,
        model=spec.name,
        settings=settings,
        target_modules=targets,
        trainable_params=method.trainable_params(spec, layers, settings),
        base_params=spec.base_params,
        rank_ceilings=_rank_ceilings(method, layers, settings) if method.layer_rank else {},
        mergeable=method.mergeable,
        target_params=target_params,
        spec=spec,
    )


def closest_knob(count: Callable[[int], int], low: int, high: int, target: int) -> int:
    """The knob in ``[low, high]`` whose (non-decreasing) ``count`` is closest to ``target``; ties go to the smaller."""
    lo, hi = low, high
    while lo < hi:  # smallest knob with count ≥ target (or high)
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > low and abs(count(lo - 1) - target) <= abs(count(lo) - target):
        return lo - 1
    return lo


def plan_method(
    name: str,
    model: str | Path | PretrainedConfig | nn.Module | ModelSpec,
    budget: Budget = "paper",
    target_params: int | None = None,
    target_modules: Sequence[str] | str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    **overrides: Any,
) -> MethodPlan:
    """Configure method ``name`` for ``model`` at a budget and count its cost.

    ``budget="paper"``: the published setting (``overrides`` replace single hyperparameters).
    ``budget="matched"``: the method's knob is set so the trainable count is closest to ``target_params`` (default:
    SMoA's paper count on this model); raises ``BudgetUnreachableError`` when even the knob's extreme values stay
    outside ``target · (1 ± tolerance)``. The achieved count may miss ±tolerance only by the knob's granularity.
    """
    method = get_method(name)
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    spec = load_model_spec(model)
    targets: tuple[str, ...] | None = None
    layers: list[LayerShape] = []
    if method.family == "adapter":
        chosen = target_modules if target_modules is not None else DEFAULT_TARGETS
        targets = (chosen,) if isinstance(chosen, str) else tuple(chosen)
        layers = _resolve_layers(method, spec, chosen)
    settings = {**method.paper, **overrides}
    if budget == "paper":
        return _make_plan(method, spec, budget, settings, layers, targets, None)

    target = int(target_params) if target_params is not None else matched_target(spec, target_modules)
    if target <= 0:
        raise ValueError(f"target_params must be a positive parameter count; got {target_params}")

    def count(value: int) -> int:
        return method.trainable_params(spec, layers, method.with_knob(settings, value))

    low, high = method.knob_range(spec, layers, settings)
    smallest, largest = count(low), count(high)
    if smallest > target * (1 + tolerance) or largest < target * (1 - tolerance):
        raise BudgetUnreachableError(
            f"{method.name} cannot reach {target:,} trainable parameters (±{tolerance:.0%}) on {spec.name}: its "
            f"configurations span {smallest:,} ({method.knob}={low}) to {largest:,} ({method.knob}={high})"
            + (f" on targets {list(targets)}" if targets else "")
            + ". Choose a target in that range"
            + (" or other target_modules." if targets else ".")
        )
    best = method.with_knob(settings, closest_knob(count, low, high, target))
    achieved = method.trainable_params(spec, layers, best)
    if abs(achieved - target) > tolerance * target and method.pattern_fields:
        best = _mixed_rank_settings(method, spec, layers, settings, count, low, high, target, best)
    return _make_plan(method, spec, budget, best, layers, targets, target)


def block_index(name: str) -> str:
    """The transformer block a module belongs to: the first integer path component (``model.layers.7.mlp`` → 7)."""
    match = re.search(r"\.(\d+)(\.|$)", name)
    return match.group(1) if match else name


def _mixed_rank_settings(
    method: MethodSpec,
    spec: ModelSpec,
    layers: list[LayerShape],
    settings: dict[str, Any],
    count: Callable[[int], int],
    low: int,
    high: int,
    target: int,
    uniform: dict[str, Any],
) -> dict[str, Any]:
    """Finer granularity for methods with PEFT per-layer patterns: knob k everywhere, k + 1 in the first m blocks.

    k is the largest knob whose uniform count is ≤ target; m is chosen closest to the target. Keys are the exact
    (escaped) module paths, so PEFT's ``rank_pattern`` / ``alpha_pattern`` match exactly those modules.
    """
    knob = closest_knob(count, low, high, target)
    if count(knob) > target:
        knob -= 1
    if knob < low or knob + 1 > high:
        return uniform
    base, bumped = method.with_knob(settings, knob), method.with_knob(settings, knob + 1)
    blocks: dict[str, list[LayerShape]] = {}
    for layer in layers:
        blocks.setdefault(block_index(layer.name), []).append(layer)
    best, best_gap = uniform, abs(method.trainable_params(spec, layers, uniform) - target)
    keys: list[str] = []
    for block_layers in blocks.values():
        keys.extend(re.escape(layer.name) for layer in block_layers)
        candidate = dict(base)
        for setting, pattern_field in method.pattern_fields.items():
            candidate[pattern_field] = {key: bumped[setting] for key in keys}
        gap = abs(method.trainable_params(spec, layers, candidate) - target)
        if gap < best_gap:
            best, best_gap = candidate, gap
    return best


def matched_target(
    model: str | Path | PretrainedConfig | nn.Module | ModelSpec, target_modules: Sequence[str] | str | None = None
) -> int:
    """The default target of matched budgets: SMoA's trainable count at its paper setting (r = 32, K = 2)."""
    return plan_method("smoa", model, "paper", target_modules=target_modules).trainable_params


def build_peft_config(
    name: str,
    model: str | Path | PretrainedConfig | nn.Module | ModelSpec,
    budget: Budget = "paper",
    target_params: int | None = None,
    target_modules: Sequence[str] | str | None = None,
    **overrides: Any,
) -> PeftConfig:
    """The PEFT config of method ``name`` for ``model`` at ``budget`` (see ``plan_method``); pass it to
    ``peft.get_peft_model(model, config)``."""
    return plan_method(name, model, budget, target_params, target_modules, **overrides).peft_config()


def plan_all(
    model: str | Path | PretrainedConfig | nn.Module | ModelSpec,
    budget: Budget = "paper",
    target_params: int | None = None,
    target_modules: Sequence[str] | str | None = None,
    methods: Sequence[str] | None = None,
) -> list[MethodPlan | Exception]:
    """``plan_method`` for every method (or those given); a method that cannot be planned yields its error."""
    spec = load_model_spec(model)
    if budget == "matched" and target_params is None:
        target_params = matched_target(spec, target_modules)
    plans: list[MethodPlan | Exception] = []
    for name in methods or method_names():
        try:
            plans.append(plan_method(name, spec, budget, target_params, target_modules))
        except (BudgetUnreachableError, UnsupportedTargetError) as error:
            plans.append(error)
    return plans


# -------------------------------------------------------------------------------------------- saved adapters
class AdapterFolderError(ValueError):
    """A saved adapter folder is missing, unreadable or incomplete."""


def check_adapter_folder(adapter_dir: str | Path) -> dict[str, Any]:
    """Check a saved PEFT adapter folder before PEFT reads it; returns its parsed ``adapter_config.json``.

    Raises:
        FileNotFoundError: the folder or its config does not exist.
        AdapterFolderError: the config is not a JSON object, has no or an unknown ``peft_type``, or there is no
            weights file — each naming the file and what to do.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    import smoa.adapter
    import smoa.baselines  # noqa: F401  (registers MeLoRA, MoRA, SSMLoRA)

    folder = Path(adapter_dir)
    config_file = folder / "adapter_config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} is not a PEFT adapter folder (no adapter_config.json); give a folder written by "
            "PeftModel.save_pretrained"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterFolderError(
            f"{config_file} is not valid JSON ({error}); restore it or save the adapter again"
        ) from None
    if not isinstance(config, dict):
        raise AdapterFolderError(f"{config_file} must hold a JSON object, not {type(config).__name__}")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise AdapterFolderError(
            f"{config_file} has no 'peft_type' string (got {peft_type!r}); it is not a PEFT config"
        )
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise AdapterFolderError(
            f"{config_file}: peft_type {peft_type!r} is not a PEFT method known here (known: "
            f"{', '.join(sorted(map(str, PEFT_TYPE_TO_CONFIG_MAPPING)))})"
        )
    if not any((folder / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterFolderError(
            f"{folder} holds adapter_config.json but no weights (adapter_model.safetensors); the save was "
            "interrupted or the file was removed: save the adapter again"
        )
    return config


def load_adapter(base: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> nn.Module:
    """``PeftModel.from_pretrained(base, adapter_dir)`` after :func:`check_adapter_folder`, in eval mode unless
    trainable; a config field of the wrong type or range is reported with the file."""
    from peft import PeftModel

    check_adapter_folder(adapter_dir)
    try:
        with warnings.catch_warnings():  # PEFT reads transformers' deprecated alias; nothing for a user to change
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
            model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)
    except TypeError as error:
        raise AdapterFolderError(f"{Path(adapter_dir) / 'adapter_config.json'}: {error}") from None
    return model if is_trainable else model.eval()
