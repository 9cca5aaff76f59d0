"""SSMLoRA: LoRA with a recurrent state carried across calls (not mergeable)."""

from .config import SSMLORA, SSMLoRAConfig
from .layer import SSMLoRALayer, align_state, ssm_state_update, ssmlora_output
from .model import SSMLoRAModel

__all__ = [
    "SSMLORA",
    "SSMLoRAConfig",
    "SSMLoRALayer",
    "SSMLoRAModel",
    "align_state",
    "ssm_state_update",
    "ssmlora_output",
]
