"""Baselines that PEFT 0.21 lacks, as out-of-tree PEFT methods: MeLoRA, MoRA (types 1 and 6) and SSMLoRA.

Importing this package registers them with PEFT under "MELORA", "MORA" and "SSMLORA", so ``get_peft_model``,
``save_pretrained``, ``PeftModel.from_pretrained`` and (for the mergeable ones) ``merge_and_unload`` work as for
built-in methods. LoRA, DoRA, HiRA and the prompt-learning methods come from PEFT itself (see ``smoa.methods``).
"""

from smoa.peft_integration import register_peft_tuner

from .common import NotMergeableError, UnsupportedLayerError
from .melora import MELORA, MeLoRAConfig, MeLoRAModel
from .mora import MORA, MoRAConfig, MoRAModel
from .ssmlora import SSMLORA, SSMLoRAConfig, SSMLoRAModel

register_peft_tuner(MELORA, MeLoRAConfig, MeLoRAModel, MeLoRAModel.prefix)
register_peft_tuner(MORA, MoRAConfig, MoRAModel, MoRAModel.prefix)
register_peft_tuner(SSMLORA, SSMLoRAConfig, SSMLoRAModel, SSMLoRAModel.prefix)

__all__ = [
    "MeLoRAConfig",
    "MeLoRAModel",
    "MoRAConfig",
    "MoRAModel",
    "NotMergeableError",
    "SSMLoRAConfig",
    "SSMLoRAModel",
    "UnsupportedLayerError",
]
