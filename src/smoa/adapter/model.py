"""The SMoA tuner: finds the target modules of a model and swaps them for SMoA layers."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from smoa._progress import progress_enabled
from smoa.peft_integration import tag_base_model

from .config import SMoAConfig
from .dispatch import dispatch_layer
from .layer import SMoALayer

_NO_BAR = SimpleNamespace(update=lambda n: None)


class SMoAModel(BaseTuner):
    """PEFT tuner for SMoA; use it through ``peft.get_peft_model(model, SMoAConfig(...))`` after ``import smoa``."""

    prefix: str = "smoa_"
    tuner_layer_cls = SMoALayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    _orders_bar: Any = _NO_BAR  # the progress bar of a running inject_adapter

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        tag_base_model(model, ["smoa"])  # the saved model card's tags name the method
        super().__init__(model, *args, **kwargs)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """PEFT's injection, under a progress bar over the target layers (each computes its block orders by SVD)."""
        from tqdm.auto import tqdm

        config = self.peft_config[adapter_name]
        svd = not getattr(config, "_orders_from_checkpoint", False) and not kwargs.get("low_cpu_mem_usage", False)
        total = sum(1 for key, _ in model.named_modules() if self._check_target_module_exists(config, key)) or None
        bar = tqdm(
            total=total,
            desc="SMoA block orders (SVD)",
            unit="layer",
            leave=False,
            disable=not (svd and progress_enabled()),
        )
        self._orders_bar = bar
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        finally:
            self._orders_bar = _NO_BAR
            bar.close()
        if "bitsandbytes" in sys.modules:  # a quantised base was loaded: bitsandbytes is imported already
            from .bnb import keep_standard_cpu_layout

            keep_standard_cpu_layout(model)

    def _create_and_replace(
        self,
        config: SMoAConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        if isinstance(target, SMoALayer):
            target.update_layer(adapter_name, config)
            self._orders_bar.update(1)
            return
        new_module = dispatch_layer(target, adapter_name, config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            # an added adapter is not trainable until it is set active
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
        self._orders_bar.update(1)

    def add_weighted_adapter(self, *args, **kwargs):
        """Not supported: a weighted sum of SMoA adapters is not an SMoA adapter (each ΔW_k = s·(B_k A_k) ⊙ W0 block
        is bilinear in its factors, and adapters may use different block orders); PEFT's LoRA recipe (concatenating
        or SVD-ing factors) does not apply."""
        raise NotImplementedError(
            "add_weighted_adapter is not supported for SMoA: a weighted combination of SMoA adapters is not an SMoA "
            "adapter (the update is a Hadamard product with W0 in each adapter's own block order). Merge the "
            "adapters one after another instead (merge_adapter / merge_and_unload compose exactly)."
        )

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Upcast fp16/bf16 factors to float32 (PEFT's default for adapters; its helper does not see ParameterLists)."""
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)
        if not autocast_adapter_dtype:
            return
        for module in self.model.modules():
            if not isinstance(module, SMoALayer):
                continue
            for attr in (module.smoa_A, module.smoa_B):
                if adapter_name not in attr:
                    continue
                for param in attr[adapter_name]:
                    if param.dtype in (torch.float16, torch.bfloat16):
                        param.data = param.data.float()


def smoa_layers(model: nn.Module) -> dict[str, SMoALayer]:
    """Every SMoA layer of a (PEFT) model by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, SMoALayer)}


__all__ = ["SMoAModel", "smoa_layers"]
