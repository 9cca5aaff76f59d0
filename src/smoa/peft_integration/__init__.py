"""Registering out-of-tree methods with PEFT.

PEFT 0.21's ``register_peft_method`` only accepts names that are already members of its closed ``PeftType`` enum, so a
method defined outside PEFT is registered by writing its config class, tuner class and parameter prefix into the three
mappings PEFT consults, under the upper-case method name. ``get_peft_model``, ``save_pretrained``,
``PeftModel.from_pretrained`` and ``merge_and_unload`` then work as for a built-in method. The config class sets
``peft_type`` to the method's :class:`OutOfTreePeftType` member (a string enum, like PEFT's ``PeftType``).

Registering also installs the load gate (:mod:`smoa.peft_integration.load_gate`): every load of a saved adapter of
these methods, through PEFT or transformers, is checked against the model it goes onto.
"""

from __future__ import annotations

import enum

import peft
from packaging.version import Version
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner

from . import load_gate

SUPPORTED_PEFT = (Version("0.21.0"), Version("0.22.0"))


class OutOfTreePeftType(enum.StrEnum):
    """``peft_type`` of the methods defined here. Members are strings (``== "SMOA"``, saved as ``"SMOA"``) that
    behave like PEFT's own ``PeftType`` members (``.value``, ``.name``), which PEFT and transformers rely on."""

    SMOA = "SMOA"
    MELORA = "MELORA"
    MORA = "MORA"
    SSMLORA = "SSMLORA"


def check_peft_version(version: str = peft.__version__) -> None:
    """Raise if the installed PEFT is outside the range whose internals this integration relies on."""
    low, high = SUPPORTED_PEFT
    if not (low <= Version(version) < high):
        raise ImportError(
            f"smoa needs peft>={low},<{high} (installed: peft {version}); earlier versions cannot save the adapter's "
            f"buffers. Install it with: python3 -m pip install 'peft>={low},<{high}'"
        )


def register_peft_tuner(name: str, config_cls: type[PeftConfig], tuner_cls: type[BaseTuner], prefix: str) -> None:
    """Make ``name`` a PEFT method. Idempotent; refuses to shadow a different class under the same name.

    Args:
        name: upper-case method name, equal to ``config_cls().peft_type`` (e.g. ``"SMOA"``).
        config_cls: the method's ``PeftConfig`` subclass.
        tuner_cls: the method's ``BaseTuner`` subclass.
        prefix: the attribute prefix of the method's adapter parameters (e.g. ``"smoa_"``).
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    check_peft_version()
    if name != name.upper():
        raise ValueError(f"PEFT method names are upper case; got {name!r}, use {name.upper()!r}")
    existing = PEFT_TYPE_TO_CONFIG_MAPPING.get(name)
    if existing is not None and existing.__qualname__ != config_cls.__qualname__:
        raise ValueError(f"PEFT method {name!r} is already registered with config {existing.__qualname__}")
    PEFT_TYPE_TO_CONFIG_MAPPING[name] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[name] = tuner_cls
    PEFT_TYPE_TO_PREFIX_MAPPING[name] = prefix
    load_gate.install(name, prefix)


def tag_base_model(model, tags: list[str]) -> None:
    """Add ``tags`` to a transformers model's ``model_tags``; PEFT writes them into the saved model card's tags."""
    if hasattr(model, "add_model_tags"):
        model.add_model_tags(tags)
