"""SMoA, the Spectrum Modulation Adapter, as a PEFT method (config, layer, tuner and the pure formula)."""

from ..peft_integration import register_peft_tuner
from .config import PEFT_TYPE, SMoAConfig
from .deploy import merge_into_full_precision
from .layer import Linear, SMoALayer
from .model import SMoAModel, smoa_layers

register_peft_tuner(PEFT_TYPE, SMoAConfig, SMoAModel, SMoAModel.prefix)

__all__ = ["PEFT_TYPE", "Linear", "SMoAConfig", "SMoALayer", "SMoAModel", "merge_into_full_precision", "smoa_layers"]
