"""Dense layers every weight adapter here targets: ``torch.nn.Linear`` and transformers' ``Conv1D``.

``nn.Linear`` stores ``W`` as ``(d_out, d_in)``; ``Conv1D`` stores it transposed, ``(d_in, d_out)`` (fan_in_fan_out).
A target of any other type is refused with :class:`UnsupportedLayerError` by SMoA and by the baselines alike.
"""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

SUPPORTED_LAYER_TYPES = "torch.nn.Linear and transformers.pytorch_utils.Conv1D"


class UnsupportedLayerError(ValueError):
    """A target module the method cannot adapt: its type, or a weight that is not a plain float matrix."""


def linear_dims(base_layer: nn.Module, module_name: str, method: str) -> tuple[int, int, bool]:
    """Return ``(d_in, d_out, fan_in_fan_out)`` of a dense layer.

    ``nn.Linear`` stores ``W`` as ``(d_out, d_in)``; ``Conv1D`` stores it as ``(d_in, d_out)`` (fan_in_fan_out=True).
    Raises ``UnsupportedLayerError`` naming the module path and type for anything else.
    """
    if isinstance(base_layer, nn.Linear):
        return base_layer.in_features, base_layer.out_features, False
    if isinstance(base_layer, Conv1D):
        d_in, d_out = base_layer.weight.shape
        return int(d_in), int(d_out), True
    layer_type = f"{type(base_layer).__module__}.{type(base_layer).__qualname__}"
    short = module_name.rsplit(".", 1)[-1]
    raise UnsupportedLayerError(
        f"{method} cannot adapt module {module_name!r} of type {layer_type}: it supports only {SUPPORTED_LAYER_TYPES}. "
        f"Remove {short!r} from target_modules or add it to exclude_modules."
    )
