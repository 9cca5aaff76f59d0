"""Checks on a saved SMoA adapter, run before it is loaded into a model.

A saved adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with, per adapted module
``<m>``: ``<m>.smoa_A.<k>`` ``(r_k, |C_k|)``, ``<m>.smoa_B.<k>`` ``(|R_k|, r_k)``, ``<m>.smoa_row_order`` ``(d_out,)``,
``<m>.smoa_col_order`` ``(d_in,)`` and ``<m>.smoa_fingerprint`` (see :func:`weight_fingerprint`).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import defaultdict

import torch
from peft.config import PeftConfig
from torch import Tensor

from smoa.peft_integration.load_gate import AdapterFileError

SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
_KEY = re.compile(r"^(?P<module>.+)\.smoa_(?P<kind>A|B)\.(?P<block>\d+)$")


def read_adapter_tensors(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a saved adapter file, or :class:`AdapterFileError` naming the file and what to do."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # every reader failure means the same thing to the user
        raise AdapterFileError(
            f"The adapter file {path} is corrupted or not an adapter checkpoint ({type(err).__name__}: {err}). "
            "Restore it from a backup or save the adapter again with model.save_pretrained(...)."
        ) from err


def validate_adapter_dir(path: str, config: PeftConfig) -> bool:
    """Check that the adapter file in ``path`` is readable and matches ``config``, an SMoA config (modules, blocks,
    ranks, orders, finite values); returns whether it holds the block orders of every module (False: they are
    recomputed, with a warning).

    Raises:
        AdapterFileError: unreadable file, modules the config does not target (or targets without factors), wrong
        number of blocks, wrong ranks, invalid block orders, or NaN/Inf values.
    """
    file = os.path.join(path, SAFETENSORS_NAME)
    if not os.path.isfile(file):
        file = os.path.join(path, BIN_NAME)
        if not os.path.isfile(file):
            return True  # PEFT itself reports a missing weights file
    tensors = read_adapter_tensors(file)
    ranks = config.ranks
    blocks: dict[str, dict[str, dict[int, torch.Tensor]]] = defaultdict(lambda: {"A": {}, "B": {}})
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match:
            blocks[match["module"]][match["kind"]][int(match["block"])] = value
    if not blocks:
        raise AdapterFileError(
            f"The adapter file {file} holds no SMoA factors (keys '<module>.smoa_A.<k>'); "
            "it was not saved from an SMoA adapter. Check the directory, or its adapter_config.json."
        )
    for key, value in tensors.items():
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()) and not key.endswith("fingerprint"):
            raise AdapterFileError(
                f"The adapter file {file} has non-finite values (NaN/Inf) in '{key}': it is corrupted or came from a "
                "diverged run. Restore it from a backup or an earlier checkpoint."
            )
    check_targets_cover(file, sorted(blocks), config)
    missing_orders = []
    for module, factors in sorted(blocks.items()):
        for kind in ("A", "B"):
            found = sorted(factors[kind])
            if found != list(range(config.num_blocks)):
                raise AdapterFileError(
                    f"The adapter file {file} has blocks {found} of smoa_{kind} for module '{module}', but its config "
                    f"says num_blocks={config.num_blocks}. The file and adapter_config.json do not belong together."
                )
        for k, r_k in enumerate(ranks):
            a_rank, b_rank = factors["A"][k].shape[0], factors["B"][k].shape[1]
            if a_rank != r_k or b_rank != r_k:
                raise AdapterFileError(
                    f"The adapter file {file} has rank {a_rank} (A) / {b_rank} (B) in block {k} of module '{module}', "
                    f"but its config gives branch ranks {ranks}. The file and adapter_config.json do not belong "
                    "together."
                )
        d_out = sum(factors["B"][k].shape[0] for k in range(config.num_blocks))
        d_in = sum(factors["A"][k].shape[1] for k in range(config.num_blocks))
        for name, size in (("smoa_row_order", d_out), ("smoa_col_order", d_in)):
            order = tensors.get(f"{module}.{name}")
            if order is None:
                missing_orders.append(module)
                continue
            check_order(order, size, f"{name} of module '{module}' in {file}")
    if missing_orders:
        warnings.warn(
            f"The adapter file {file} has no saved block orders for {len(set(missing_orders))} module(s) "
            f"(first: '{missing_orders[0]}'). They will be recomputed by SVD of the base weights, which can differ "
            "across devices and library versions when singular values are nearly equal. Save the adapter with smoa "
            "to keep them.",
            stacklevel=3,
        )
    return not missing_orders


def check_targets_cover(file: str, modules: list[str], config: PeftConfig) -> None:
    """The config must adapt exactly the modules whose factors are saved: a saved module it does not target would be
    dropped on load (its update lost), a target with no saved module would load as the identity.

    Raises:
        AdapterFileError: naming the first module (or target) that does not match.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [m.removeprefix("base_model.model.") for m in modules]
    if config.target_modules is None:
        raise AdapterFileError(
            f"{os.path.join(os.path.dirname(file), 'adapter_config.json')} has no target_modules, so PEFT's defaults "
            f"would apply, while {file} holds factors for modules such as '{names[0]}'. The config was edited: "
            "restore its target_modules."
        )
    targets = config.target_modules
    shown = sorted(targets) if isinstance(targets, set) else targets
    for name in names:
        if not check_target_module_exists(config, name):
            raise AdapterFileError(
                f"{os.path.join(os.path.dirname(file), 'adapter_config.json')}: target_modules={shown!r}"
                f" does not cover module '{name}', whose factors are saved in {file}; loading would drop its update. "
                "The config was edited or belongs to another adapter: restore its target_modules."
            )
    if isinstance(config.target_modules, set) and not config.layers_to_transform:
        for target in sorted(config.target_modules):
            if not any(name == target or name.endswith(f".{target}") for name in names):
                raise AdapterFileError(
                    f"{os.path.join(os.path.dirname(file), 'adapter_config.json')}: target_modules names '{target}', "
                    f"but {file} holds no factors for any '{target}' module; loading would add an untrained branch. "
                    "The config was edited or belongs to another adapter: restore its target_modules."
                )


def check_order(order: torch.Tensor, size: int, what: str) -> None:
    """Raise :class:`AdapterFileError` unless ``order`` is a permutation of ``0..size-1``."""
    if order.dtype.is_floating_point or order.dtype.is_complex or order.dtype == torch.bool:
        raise AdapterFileError(f"{what} has dtype {order.dtype}; block orders are integer index vectors.")
    if order.shape != (size,):
        raise AdapterFileError(f"{what} has shape {tuple(order.shape)}, expected ({size},).")
    if not torch.equal(torch.sort(order.cpu().long()).values, torch.arange(size)):
        raise AdapterFileError(f"{what} is not a permutation of 0..{size - 1}: the adapter file is corrupted.")


def weight_fingerprint(weight: Tensor, n_probes: int = 8) -> Tensor:
    """A small, device- and dtype-robust signature of a weight matrix, for recognising the base an adapter was made on.

    ``[‖W‖_F, p_1 … p_n]`` in float64 with ``p_i = u_iᵀ W v_i / (‖u_i‖‖v_i‖) / rms(W)``, where ``u_i``, ``v_i`` are
    fixed deterministic cosine probes and ``rms(W) = ‖W‖_F / √(d_out d_in)``. For unrelated weights the normalised
    probes differ by O(1); rounding the same weights to bf16 moves them by ~1e-3.
    """
    w = weight.detach()
    compute = torch.float64 if w.device.type in ("cpu", "cuda") else torch.float32
    w = w.to(compute)
    d_out, d_in = w.shape
    i_out = torch.arange(d_out, dtype=compute, device=w.device)
    i_in = torch.arange(d_in, dtype=compute, device=w.device)
    k = torch.arange(1, n_probes + 1, dtype=compute, device=w.device).unsqueeze(1)
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    u = torch.cos(i_out * (k * golden * 2.0 + 0.5) + k)  # (n, d_out)
    v = torch.cos(i_in * (k * golden * 3.0 + 0.25) - k)  # (n, d_in)
    norm = torch.linalg.vector_norm(w)
    rms = norm / math.sqrt(d_out * d_in)
    proj = ((u @ w) * v).sum(dim=1) / (torch.linalg.vector_norm(u, dim=1) * torch.linalg.vector_norm(v, dim=1))
    proj = proj / rms.clamp_min(torch.finfo(compute).tiny)
    return torch.cat([norm.reshape(1), proj]).to(device="cpu", dtype=torch.float64)


def fingerprints_match(saved: Tensor, actual: Tensor, rtol: float = 0.02, atol: float = 0.05) -> bool:
    """Whether two :func:`weight_fingerprint` vectors describe the same weights (up to dtype rounding)."""
    if saved.shape != actual.shape:
        return False
    saved, actual = saved.double().cpu(), actual.double().cpu()
    norm_ok = bool(torch.isclose(saved[0], actual[0], rtol=rtol, atol=1e-12))
    return norm_ok and bool(((saved[1:] - actual[1:]).abs() <= atol).all())
