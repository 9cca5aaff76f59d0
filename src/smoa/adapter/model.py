"""The SMoA tuner: finds the target modules of a model and swaps them for SMoA layers."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from .config import SMoAConfig
from .layer import SMoALayer, dispatch_default


class SMoAModel(BaseTuner):
    """PEFT tuner for SMoA; use it through ``peft.get_peft_model(model, SMoAConfig(...))`` after ``import smoa``."""

    prefix: str = "smoa_"
    tuner_layer_cls = SMoALayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

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
            return
        new_module = dispatch_default(target, adapter_name, config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            # an added adapter is not trainable until it is set active
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

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
