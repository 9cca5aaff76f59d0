"""What the out-of-tree baselines (MeLoRA, MoRA, SSMLoRA) share.

Each baseline adapts dense layers only: ``torch.nn.Linear`` (weight ``(d_out, d_in)``) and transformers' ``Conv1D``
(weight stored transposed, ``(d_in, d_out)``, i.e. fan_in_fan_out). This module holds

- ``linear_dims`` (from :mod:`smoa.dense`, shared with SMoA): the layer's ``(d_in, d_out, fan_in_fan_out)``, or an
  ``UnsupportedLayerError`` naming the module and its type;
- ``DenseAdapterConfig``: the PEFT config fields every baseline has (targets, exclusions, layer selection, bias);
- ``DenseAdapterLayer``: the tuner-layer skeleton: per-adapter containers keyed by adapter name, the forward
  ``y = base(x) + Σ_active adapter_output(x)``, and additive merge ``W ← W + ΔW`` / unmerge ``W ← W − ΔW``;
- ``DenseAdapterTuner``: the ``BaseTuner`` that finds targets and swaps in the method's layer class.

A method supplies its math as pure functions and a layer subclass implementing ``update_layer``,
``adapter_output`` and (when mergeable) ``get_delta_weight``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from smoa.dense import UnsupportedLayerError, linear_dims


class NotMergeableError(ValueError):
    """The method has no weight update ΔW that could be merged into the base weight."""


@dataclass
class DenseAdapterConfig(PeftConfig):
    """PEFT config fields shared by the dense-layer baselines (same meaning as in PEFT's ``LoraConfig``)."""

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (exact or suffix match) or one regex (full match) of the layers to adapt, e.g. "
            "['q_proj', 'v_proj']. None uses PEFT's default LoRA targets for known architectures."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or one regex of layers never to adapt."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt the transformer blocks with these indices (needs a list target)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the nn.ModuleList of blocks, e.g. 'layers' or 'h'."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules set trainable and saved with the adapter (e.g. a new head)."}
    )
    bias: Literal["none", "all"] = field(
        default="none", metadata={"help": "Train no biases ('none') or every bias of the model ('all')."}
    )

    def _validate_common(self) -> None:
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.bias not in ("none", "all"):
            raise ValueError(f"bias={self.bias!r} is not supported; use 'none' or 'all'")
        if isinstance(self.target_modules, str) and (self.layers_to_transform is not None or self.layers_pattern):
            raise ValueError(
                "layers_to_transform / layers_pattern need target_modules as a list of names, not a regex string "
                f"({self.target_modules!r})"
            )


def delta_dtype(param: torch.Tensor) -> torch.dtype:
    """float32 for half precision on CPU (slow or missing half matmuls there), else ``param``'s own dtype."""
    if param.device.type == "cpu" and param.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return param.dtype


class DenseAdapterLayer(nn.Module, BaseTunerLayer):
    """Tuner layer around a dense base layer; subclasses hold their per-adapter tensors in containers keyed by name.

    Forward: ``y = base(x) + Σ_{a active} adapter_output(x, a)``. Merge (mergeable methods): ``W ← W + ΔW_a`` with
    ``ΔW_a = get_delta_weight(a)`` of shape ``(d_out, d_in)`` (transposed for Conv1D); unmerge subtracts it again.
    """

    method_name: ClassVar[str] = "adapter"
    mergeable: ClassVar[bool] = True
    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, module_name: str, **kwargs: Any) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name
        self.in_features, self.out_features, self.fan_in_fan_out = linear_dims(
            self.get_base_layer(), module_name, self.method_name
        )
        self.dropout = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.cast_input_dtype_enabled = True
        self.kwargs = kwargs

    # -- to be provided by the method -------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config: PeftConfig) -> None:
        raise NotImplementedError

    def adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """The adapter's additive contribution to the layer output for input ``x`` of shape ``(..., d_in)``."""
        raise NotImplementedError

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW of shape ``(d_out, d_in)`` such that ``adapter_output(x) = x ΔWᵀ`` (without dropout)."""
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------------------------------------
    def _set_dropout(self, adapter_name: str, p: float) -> None:
        self.dropout[adapter_name] = nn.Dropout(p=p) if p > 0.0 else nn.Identity()

    def _finish_update(self, adapter_name: str) -> None:
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _weight_delta(self, adapter_name: str) -> torch.Tensor:
        delta = self.get_delta_weight(adapter_name)
        return delta.T if self.fan_in_fan_out else delta

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """``W ← W + ΔW`` for each given (default: active) adapter not merged yet."""
        if not self.mergeable:
            raise NotMergeableError(not_mergeable_message(self.method_name))
        adapter_names = check_adapters_to_merge(self, adapter_names)
        available = self._get_available_adapters()
        weight = self.get_base_layer().weight
        for name in adapter_names:
            if name not in available:
                continue
            new_weight = weight.data + self._weight_delta(name).to(weight.dtype)
            if safe_merge and not torch.isfinite(new_weight).all():
                raise ValueError(
                    f"NaNs or infs in the merged weight of {self.module_name!r}: adapter {name!r} is broken"
                )
            weight.data.copy_(new_weight)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """``W ← W − ΔW`` for every merged adapter, last merged first."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight.data -= self._weight_delta(name).to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        available = self._get_available_adapters()
        for name in self.active_adapters:
            if name not in available:
                continue
            adapter_dtype = getattr(self, self.adapter_layer_names[0])[name].dtype
            result = result + self.adapter_output(self._cast_input_dtype(x, adapter_dtype), name).to(result_dtype)
        return result

    def __repr__(self) -> str:
        return f"{self.method_name.lower()}." + super().__repr__()


def not_mergeable_message(method: str) -> str:
    return (
        f"{method} is not mergeable: its output is not a linear function of the input (it carries a recurrent state "
        "across calls and applies a nonlinearity), so there is no weight update ΔW to add to the base weight. Keep the "
        "adapter unmerged for inference, or use unload() to remove it and get the base model back."
    )


class DenseAdapterTuner(BaseTuner):
    """Finds the target layers and wraps each in ``layer_cls`` (or adds an adapter to an already wrapped one)."""

    layer_cls: ClassVar[type[DenseAdapterLayer]]
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self,
        peft_config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, peft_config)
            return
        if isinstance(target, BaseTunerLayer):
            raise UnsupportedLayerError(
                f"module {current_key!r} already carries an adapter of another method ({type(target).__name__}); "
                f"{self.layer_cls.method_name} cannot be stacked on it"
            )
        new_module = self.layer_cls(target, adapter_name, peft_config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self) -> None:
        if not self.layer_cls.mergeable:
            raise NotMergeableError(not_mergeable_message(self.layer_cls.method_name))
        super()._check_merge_allowed()

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        if not self.layer_cls.mergeable:
            raise NotMergeableError(not_mergeable_message(self.layer_cls.method_name))
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)
