"""smoa: SMoA, the Spectrum Modulation Adapter, as a PEFT method, with its baselines, tasks and analyses.

``import smoa`` registers SMoA with PEFT, so ``peft.get_peft_model(model, smoa.SMoAConfig(...))``,
``save_pretrained``, ``PeftModel.from_pretrained`` and ``merge_and_unload`` work as for a built-in method.
"""

from . import baselines  # registers MeLoRA, MoRA and SSMLoRA with PEFT
from .adapter import SMoAConfig, SMoALayer, SMoAModel, smoa_layers

__version__ = "0.1.0"
__all__ = ["SMoAConfig", "SMoALayer", "SMoAModel", "__version__", "baselines", "smoa_layers"]
