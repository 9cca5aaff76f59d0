"""Which SMoA layer wraps a target: the quantised ones of :mod:`.bnb` for bitsandbytes 4-bit / 8-bit layers, the
plain :class:`~smoa.adapter.layer.Linear` for ``nn.Linear`` and ``Conv1D``; anything else is refused by name.

It sits above both layer modules, so neither imports the other to dispatch; bitsandbytes is imported only when a
layer of it is met.
"""

from __future__ import annotations

import warnings

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from smoa.dense import UnsupportedLayerError

from .base_checks import unsupported_layer_message
from .config import SMoAConfig
from .layer import Linear


def dispatch_default(target: nn.Module, adapter_name: str, config: SMoAConfig, module_name: str) -> Linear:
    """Wrap ``target`` (Linear or Conv1D) in an SMoA layer, setting ``fan_in_fan_out`` from the layer type."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, nn.Linear):
        if config.fan_in_fan_out:
            warnings.warn(
                f"fan_in_fan_out=True but module '{module_name}' is torch.nn.Linear; using False for it.", stacklevel=3
            )
        return Linear(target, adapter_name, config, fan_in_fan_out=False, module_name=module_name)
    if isinstance(base, Conv1D):
        return Linear(target, adapter_name, config, fan_in_fan_out=True, module_name=module_name)
    raise UnsupportedLayerError(unsupported_layer_message(module_name, base))


def dispatch_layer(target: nn.Module, adapter_name: str, config: SMoAConfig, module_name: str) -> Linear:
    """The SMoA layer for ``target``: a quantised one for bitsandbytes 4-bit / 8-bit layers (:mod:`.bnb`), else
    :func:`dispatch_default`. bitsandbytes is imported only when such a layer is met."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if type(base).__module__.startswith("bitsandbytes."):
        from .bnb import dispatch_bnb

        layer = dispatch_bnb(target, adapter_name, config, module_name=module_name)
        if layer is not None:
            return layer
    return dispatch_default(target, adapter_name, config, module_name=module_name)
