"""MeLoRA as a PEFT tuner: finds the target dense layers and wraps them in ``MeLoRALayer``."""

from __future__ import annotations

from smoa.baselines.common import DenseAdapterTuner

from .layer import MeLoRALayer


class MeLoRAModel(DenseAdapterTuner):
    """PEFT tuner of MeLoRA (registered by ``smoa.baselines``; ``get_peft_model(model, MeLoRAConfig(...))``)."""

    prefix: str = "melora_"
    tuner_layer_cls = MeLoRALayer
    layer_cls = MeLoRALayer
