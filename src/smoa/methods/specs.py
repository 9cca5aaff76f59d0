"""What the registry knows about a base model: the shapes of the layers it could adapt, built without weights.

A :class:`ModelSpec` comes from a named config shipped in ``smoa/model_configs`` (``load_model_spec("llama-2-7b")``), a
Hugging Face folder, a config or a built model; configs are instantiated on the meta device, so no memory is used.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.pytorch_utils import Conv1D

NAMED_MODELS: dict[str, str] = {
    "smollm2-135m": "smollm2-135m.json",
    "llama-2-7b": "llama-2-7b.json",
    "llama-3-8b": "llama-3-8b.json",
}
DENSE_TYPES = ("Linear", "Conv1D")


class UnsupportedTargetError(ValueError):
    """A target module is of a layer type the method cannot adapt, or no module matches the targets."""


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


def block_index(name: str) -> str:
    """The transformer block a module belongs to: the first integer path component (``model.layers.7.mlp`` → 7)."""
    match = re.search(r"\.(\d+)(\.|$)", name)
    return match.group(1) if match else name
