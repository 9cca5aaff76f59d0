"""Saved adapter folders: checked before PEFT reads them, then loaded (one loader for eval, analysis and the study)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn


class AdapterFolderError(ValueError):
    """A saved adapter folder is missing, unreadable or incomplete."""


def check_adapter_folder(adapter_dir: str | Path) -> dict[str, Any]:
    """Check a saved PEFT adapter folder before PEFT reads it; returns its parsed ``adapter_config.json``.

    Raises:
        FileNotFoundError: the folder or its config does not exist.
        AdapterFolderError: the config is not a JSON object, has no or an unknown ``peft_type``, or there is no
            weights file — each naming the file and what to do.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    import smoa.adapter
    import smoa.baselines  # noqa: F401  (registers MeLoRA, MoRA, SSMLoRA)

    folder = Path(adapter_dir)
    config_file = folder / "adapter_config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} is not a PEFT adapter folder (no adapter_config.json); give a folder written by "
            "PeftModel.save_pretrained"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterFolderError(
            f"{config_file} is not valid JSON ({error}); restore it or save the adapter again"
        ) from None
    if not isinstance(config, dict):
        raise AdapterFolderError(f"{config_file} must hold a JSON object, not {type(config).__name__}")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise AdapterFolderError(
            f"{config_file} has no 'peft_type' string (got {peft_type!r}); it is not a PEFT config"
        )
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise AdapterFolderError(
            f"{config_file}: peft_type {peft_type!r} is not a PEFT method known here (known: "
            f"{', '.join(sorted(map(str, PEFT_TYPE_TO_CONFIG_MAPPING)))})"
        )
    if not any((folder / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterFolderError(
            f"{folder} holds adapter_config.json but no weights (adapter_model.safetensors); the save was "
            "interrupted or the file was removed: save the adapter again"
        )
    return config


def load_adapter(base: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> nn.Module:
    """``PeftModel.from_pretrained(base, adapter_dir)`` after :func:`check_adapter_folder`, in eval mode unless
    trainable; a config field of the wrong type or range is reported with the file."""
    from peft import PeftModel

    check_adapter_folder(adapter_dir)
    try:
        with warnings.catch_warnings():  # PEFT reads transformers' deprecated alias; nothing for a user to change
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
            model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)
    except TypeError as error:
        raise AdapterFolderError(f"{Path(adapter_dir) / 'adapter_config.json'}: {error}") from None
    return model if is_trainable else model.eval()
