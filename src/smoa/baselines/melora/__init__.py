"""MeLoRA: mini-ensemble low-rank adapters on contiguous diagonal blocks."""

from .config import MELORA, MeLoRAConfig
from .layer import MeLoRALayer, melora_delta_weight, melora_output
from .model import MeLoRAModel

__all__ = ["MELORA", "MeLoRAConfig", "MeLoRALayer", "MeLoRAModel", "melora_delta_weight", "melora_output"]
