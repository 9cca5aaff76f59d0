"""The one check every load of a saved adapter goes through, whatever loads it.

PEFT (``PeftModel.from_pretrained``, ``PeftModel.load_adapter``, and everything built on them: AutoPeftModel, the
mixed model, ``smoa eval --adapter``) and transformers (``model.load_adapter``, ``from_pretrained(adapter_dir)``)
read adapter files by different code: PEFT through ``load_state_dict``, transformers by assigning each tensor. So
the check runs after either has loaded, on the model as loaded, against the saved tensors
(:func:`check_loaded_adapter`). :func:`install` wraps both ``load_adapter`` methods once, when a method of this
project is registered; a load it refuses leaves no half-loaded adapter behind.

The check, for an adapter of a method registered here (or weights that carry such a method's parameters):

- the config's method is the method of the weights (a LoRA ``adapter_config.json`` over SMoA weights would load
  nothing and evaluate the bare base);
- the weights cover exactly the adapter's parameters: none missing (that module would stay at its initial value,
  the identity for SMoA), none the model has no place for (dropped), every shape the model's;
- every saved floating value is finite;
- each adapter layer's own check (``check_loaded_adapter(adapter_name, missing)`` on the layer: for SMoA, the block
  orders are permutations and the base fingerprint matches the weights it wraps), told which of its optional
  buffers the file lacked.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import Any

import torch

#: the prefix PEFT puts before the base model in a ``PeftModel``'s state-dict keys
PEFT_PREFIX = "base_model.model."


class AdapterFileError(ValueError):
    """A saved adapter file is unreadable, or does not match its config or the model it is loaded onto."""


def _saved_key(key: str) -> str:
    return key.removeprefix(PEFT_PREFIX)


#: ``{peft_type: parameter prefix}`` of the methods whose loads are gated (filled by :func:`install`)
GATED: dict[str, str] = {}


def _methods_of(keys: list[str]) -> dict[str, str]:
    """``{peft_type: an example key}`` for every registered method whose parameters appear in ``keys``."""
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    found: dict[str, str] = {}
    for peft_type, prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        for key in keys:
            if any(part.startswith(prefix) for part in key.split(".")):
                found.setdefault(str(peft_type), key)
                break
    return found


def _gated(peft_type: str, keys: list[str]) -> bool:
    return peft_type in GATED or any(method in GATED for method in _methods_of(keys))


def check_saved_weights(peft_type: str, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """The checks that need only the saved tensors: they are ``peft_type``'s parameters (not another method's), and
    every floating value is finite. Run before a load starts, and again by :func:`check_loaded_adapter`.

    Raises:
        AdapterFileError: naming ``source`` and the key.
    """
    keys = sorted(weights)
    if not _gated(peft_type, keys):
        return
    methods = _methods_of(keys)
    if methods and peft_type not in methods:
        method, key = next(iter(methods.items()))
        raise AdapterFileError(
            f"{source}: adapter_config.json says peft_type {peft_type}, but the weights are {method} parameters "
            f"(e.g. '{key}'); loaded as {peft_type} they would load nothing. The config belongs to another adapter: "
            "restore the folder's own adapter_config.json"
        )
    for key in keys:
        value = weights[key]
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()) and "fingerprint" not in key:
            raise AdapterFileError(
                f"{source}: '{key}' has non-finite values (NaN/Inf): the file is corrupted or came from a diverged "
                "run. Restore it from a backup or an earlier checkpoint"
            )


def check_loaded_adapter(
    model: torch.nn.Module, adapter_name: str, weights: Mapping[str, torch.Tensor] | None, source: str
) -> None:
    """Refuse an adapter that ``model`` (a ``PeftModel`` or a transformers model with adapters) has just loaded as
    ``adapter_name`` from ``weights`` (the saved tensors, keys as PEFT saves them), unless it is exactly what was
    saved for this model (module docstring). ``weights=None`` (factors placed by other means) runs the layers' own
    checks only. Adapters of other methods (PEFT's own) pass untouched.

    Raises:
        AdapterFileError: naming ``source``, the key or module, and what to do.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict

    config = model.peft_config[adapter_name]
    peft_type = str(config.peft_type)
    keys = sorted(weights or {})
    if not _gated(peft_type, keys):
        return
    layers = {
        _saved_key(name): module
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and hasattr(module, "check_loaded_adapter")
    }
    missing_by_layer: dict[str, set[str]] = {name: set() for name in layers}
    if weights is not None:
        check_saved_weights(peft_type, weights, source)
        expected = {_saved_key(k): v for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
        saved = {_saved_key(k): v for k, v in weights.items()}
        unexpected = sorted(set(saved) - set(expected))
        if unexpected:
            raise AdapterFileError(
                f"{source}: '{unexpected[0]}' ({len(unexpected)} saved tensor(s) in all) has no place in the model "
                "it is loaded onto, so it would be dropped with its update. Load the adapter onto the base it was "
                "trained on, with the adapter_config.json it was saved with"
            )
        for key in sorted(set(expected) - set(saved)):
            layer = next((name for name in layers if key.startswith(f"{name}.")), None)
            attribute = key[len(layer) + 1 :] if layer else key
            if layer is not None and attribute.split(".")[0] in getattr(layers[layer], "optional_saved", ()):
                missing_by_layer[layer].add(attribute.split(".")[0])
                continue
            count = len(set(expected) - set(saved))
            raise AdapterFileError(
                f"{source}: the saved adapter lacks '{key}' ({count} of the model's adapter tensor(s) missing); that "
                "module would keep its initial value instead of the trained one. The file is incomplete or its "
                "adapter_config.json targets more than was saved: save the adapter again, or restore its config"
            )
        for key in sorted(saved):
            value, wanted = saved[key], expected[key]
            if tuple(value.shape) != tuple(wanted.shape):
                raise AdapterFileError(
                    f"{source}: '{key}' has shape {tuple(value.shape)}, the model's needs {tuple(wanted.shape)}; "
                    "the file and adapter_config.json (or the base) do not belong together"
                )
            if not wanted.dtype.is_floating_point and value.dtype != wanted.dtype:
                raise AdapterFileError(
                    f"{source}: '{key}' has dtype {value.dtype}, the model's is {wanted.dtype} (an index vector); "
                    "the file was edited or written by other code: save the adapter again"
                )
    for name, layer in layers.items():
        layer.check_loaded_adapter(adapter_name, frozenset(missing_by_layer[name]))  # a layer without it: no-op


def _refused(model: torch.nn.Module, adapter_name: str, had_before: bool) -> None:
    """Remove an adapter the gate refused, so the model is as it was before the load (best effort)."""
    if had_before:
        return
    with contextlib.suppress(Exception):  # the refusal itself is what the caller must see
        model.delete_adapter(adapter_name)


def _read_saved(model_id: str, hub: dict[str, Any]) -> tuple[str, dict[str, torch.Tensor]]:
    """``(peft_type, tensors)`` of a saved adapter (local folder or the Hub cache), read by PEFT's own readers."""
    from peft.config import PeftConfig
    from peft.utils import load_peft_weights

    peft_type = str(PeftConfig._get_peft_type(model_id, **hub))
    return peft_type, load_peft_weights(model_id, device="cpu", **hub)


def _peft_load_adapter(original):
    @functools.wraps(original)
    def load_adapter(self, model_id, adapter_name, *args, **kwargs):
        hub, _ = self._split_kwargs(dict(kwargs))
        hub.pop("key_mapping", None)
        peft_type, weights = _read_saved(str(model_id), hub)
        check_saved_weights(peft_type, weights, str(model_id))
        had_before = adapter_name in getattr(self, "peft_config", {})
        result = original(self, model_id, adapter_name, *args, **kwargs)
        try:
            check_loaded_adapter(self, adapter_name, weights, str(model_id))
        except AdapterFileError:
            _refused(self, adapter_name, had_before)
            raise
        return result

    load_adapter.__smoa_gate__ = True
    return load_adapter


def _transformers_load_adapter(original):
    @functools.wraps(original)
    def load_adapter(self, peft_model_id=None, adapter_name=None, *args, **kwargs):
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        name = adapter_name if adapter_name is not None else "default"
        source = str(peft_model_id) if peft_model_id is not None else "the adapter_state_dict"
        weights = kwargs.get("adapter_state_dict")
        if weights is None and peft_model_id is not None:
            hub = dict(kwargs.get("adapter_kwargs") or {})
            hub.update({k: kwargs[k] for k in ("revision", "token", "local_files_only", "cache_dir") if k in kwargs})
            peft_type, weights = _read_saved(str(peft_model_id), hub)
            check_saved_weights(peft_type, weights, source)
            if kwargs.get("peft_config") is None and peft_type in GATED:
                # the method's own from_pretrained checks the file against its config before anything is injected
                # (PEFT's path does the same); transformers would build the config without looking at the file
                kwargs["peft_config"] = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].from_pretrained(
                    str(peft_model_id), **hub
                )
        had_before = name in (getattr(self, "peft_config", None) or {})
        result = original(self, peft_model_id, adapter_name, *args, **kwargs)
        try:
            check_loaded_adapter(self, name, weights, source)
        except AdapterFileError:
            _refused(self, name, had_before)
            raise
        return result

    load_adapter.__smoa_gate__ = True
    return load_adapter


def install(peft_type: str, prefix: str) -> None:
    """Gate the loads of ``peft_type`` (parameters named ``<prefix>...``): wrap ``peft.PeftModel.load_adapter`` and
    transformers' ``PeftAdapterMixin.load_adapter`` with the gate, once."""
    from peft import PeftModel
    from transformers.integrations.peft import PeftAdapterMixin

    GATED[peft_type] = prefix
    if not getattr(PeftModel.load_adapter, "__smoa_gate__", False):
        PeftModel.load_adapter = _peft_load_adapter(PeftModel.load_adapter)
    if not getattr(PeftAdapterMixin.load_adapter, "__smoa_gate__", False):
        PeftAdapterMixin.load_adapter = _transformers_load_adapter(PeftAdapterMixin.load_adapter)
