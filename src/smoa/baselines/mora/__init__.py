"""MoRA: a square r̂ × r̂ matrix between fixed compression and decompression (types 1 and 6)."""

from .config import MORA, MORA_TYPES, MoRAConfig
from .layer import MoRALayer, mora_delta_weight, mora_output, mora_rank
from .model import MoRAModel

__all__ = [
    "MORA",
    "MORA_TYPES",
    "MoRAConfig",
    "MoRALayer",
    "MoRAModel",
    "mora_delta_weight",
    "mora_output",
    "mora_rank",
]
