"""Adapters saved by the authors' code (misonsky/SMoA, a fork of an early PEFT), imported into this format.

Their folder holds ``adapter_config.json`` (``peft_type: "SMOA"``; ``r``, ``num_blocks``, ``branch_ranks``,
``lora_alpha``, ``lora_dropout``, ``target_modules``, ``fan_in_fan_out``, ``bias``, ``modules_to_save``,
``layers_to_transform``, ``layers_pattern``) and ``adapter_model.bin`` or ``adapter_model.safetensors`` with only the
factors: ``<module>.lora_A.<k>.weight`` of shape ``(r_k, |C_k|)`` and ``<module>.lora_B.<k>.weight`` of shape
``(|R_k|, r_k)`` for block k (a block of rank 0 has none). Their orders are not saved: their code recomputes the SVD
each time it loads, so the orders, and with them ΔW, depend on the SVD run (threads, dtype, library). The import
computes the orders once, with the authors' arithmetic (:func:`smoa.adapter.functional.spectral_scores`; exact ties
are broken by position), and saves them with the factors, so that every later load gives the same ΔW.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import SMoAConfig

AUTHORS_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<block>\d+)\.weight$")
_CONFIG_KEYS = (
    "r",
    "num_blocks",
    "branch_ranks",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "fan_in_fan_out",
    "bias",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
)


class AuthorsCheckpointError(ValueError):
    """A folder that is not an adapter saved by the authors' SMoA code, or one that does not fit the model."""


def read_authors_checkpoint(folder: str | os.PathLike[str]) -> tuple[SMoAConfig, dict[str, torch.Tensor]]:
    """``(config, factors)`` of an adapter folder saved by the authors' code (see the module docstring).

    Raises:
        AuthorsCheckpointError: no ``adapter_config.json`` / weights, another method, or a folder in this project's
            own format (which loads directly, with its saved orders).
    """
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise AuthorsCheckpointError(f"{folder} holds no adapter_config.json; give the folder the authors' code saved")
    try:
        saved = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise AuthorsCheckpointError(f"{config_file} is not valid JSON ({error})") from None
    if str(saved.get("peft_type", "")).upper() != "SMOA":
        raise AuthorsCheckpointError(f"{config_file}: peft_type is {saved.get('peft_type')!r}, not SMOA")
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        weights = load_file(str(folder / "adapter_model.safetensors"))
    elif (folder / "adapter_model.bin").is_file():
        weights = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise AuthorsCheckpointError(f"{folder} holds neither adapter_model.safetensors nor adapter_model.bin")
    if any(key.endswith("smoa_row_order") for key in weights):
        raise AuthorsCheckpointError(
            f"{folder} is an adapter of this project (it carries its block orders); load it with "
            "PeftModel.from_pretrained or smoa eval --adapter, no import needed"
        )
    factors = {key: value for key, value in weights.items() if AUTHORS_FACTOR.match(key)}
    if not factors:
        raise AuthorsCheckpointError(f"{folder}: no lora_A/lora_B factors of the authors' format in its weights")
    options: dict[str, Any] = {key: saved[key] for key in _CONFIG_KEYS if saved.get(key) is not None}
    try:
        config = SMoAConfig(**options)
    except (TypeError, ValueError) as error:
        raise AuthorsCheckpointError(f"{config_file}: {error}") from None
    config.base_model_name_or_path = saved.get("base_model_name_or_path")
    return config, {key: value for key, value in weights.items() if key in factors or "lora_" not in key}


def import_authors_adapter(model, folder: str | os.PathLike[str], adapter_name: str = "default"):
    """The base ``model`` with the authors' adapter in ``folder``: a PEFT model of this project whose orders were
    computed now (see the module docstring) and whose factors are the authors'.

    Every saved factor must land on a parameter of the same shape, and every factor of the model must be given
    (blocks of rank 0 excepted); otherwise :class:`AuthorsCheckpointError` names the key.
    """
    from peft import get_peft_model

    config, weights = read_authors_checkpoint(folder)
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    parameters = dict(peft_model.named_parameters())
    expected = {name for name, p in parameters.items() if re.search(rf"\.smoa_[AB]\.{re.escape(adapter_name)}\.", name)}
    loaded = set()
    with torch.no_grad():
        for key, value in weights.items():
            match = AUTHORS_FACTOR.match(key)
            if match is None:
                continue  # modules_to_save and biases are not part of the import
            name = f"{match['module']}.smoa_{match['which']}.{adapter_name}.{match['block']}"
            target = parameters.get(name)
            if target is None:
                raise AuthorsCheckpointError(f"{folder}: factor {key} has no place in the model (looked for {name})")
            if target.shape != value.shape:
                raise AuthorsCheckpointError(
                    f"{folder}: factor {key} has shape {tuple(value.shape)}, the model's block needs "
                    f"{tuple(target.shape)}; was it saved for another base model?"
                )
            target.copy_(value.to(target.dtype))
            loaded.add(name)
    missing = sorted(name for name in expected - loaded if parameters[name].numel() > 0)
    if missing:
        raise AuthorsCheckpointError(f"{folder}: no saved factor for {missing[0]} ({len(missing)} missing)")
    from smoa.peft_integration.load_gate import check_loaded_adapter

    check_loaded_adapter(peft_model, adapter_name, None, str(folder))  # their files carry no fingerprint to check
    warnings.warn(
        "the authors' code does not save block orders and recomputes them at every load, so their ΔW depends on the "
        "SVD run (threads, dtype); these orders were computed now with their arithmetic and are saved with the "
        "adapter, so they stay fixed from here on",
        UserWarning,
        stacklevel=2,
    )
    return peft_model
