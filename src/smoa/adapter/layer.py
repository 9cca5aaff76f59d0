"""The SMoA tuner layer: holds per-adapter state and calls the pure functions of :mod:`.functional`.

State per adapter (dicts keyed by adapter name, so several adapters live side by side):

* trainable: ``smoa_A[name][k]`` ``(r_k, |C_k|)`` and ``smoa_B[name][k]`` ``(|R_k|, r_k)``;
* persistent buffers: ``smoa_row_order[name]`` ``(d_out,)``, ``smoa_col_order[name]`` ``(d_in,)`` (int64) and
  ``smoa_fingerprint[name]`` (float64, the base weight's signature);
* nothing of size ``d_out × d_in``: anchors are gathered from the base weight when needed. While merged, a CPU copy
  of the original weight is kept so that unmerging restores it exactly.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils.integrations import gather_params_ctx
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from smoa.dense import UnsupportedLayerError

from . import functional as F
from .autograd import BlockAnchors, blockwise_delta_output, fused_linear
from .checkpoint import AdapterFileError, check_order, fingerprints_match, weight_fingerprint
from .config import SMoAConfig

_UNSET = -1  # fills an order buffer whose values will come from a checkpoint
KERNELS = ("auto", "fused", "blockwise", "reference")


class SMoALayer(BaseTunerLayer):
    """Mixin with the SMoA state of one adapted layer; :class:`Linear` is the concrete module."""

    adapter_layer_names: tuple[str, ...] = ("smoa_A", "smoa_B")
    # How the unmerged forward is computed (all exact; see smoa.adapter.autograd):
    # "fused": one matmul with W0 + ΔW (needs no active dropout, a single active adapter, float32/64 compute);
    # "blockwise": base output + per-block branch, never forming a d_out x d_in matrix;
    # "reference": plain autograd through functional.delta_output; "auto": fused when allowed and the input has at
    # least `fuse_min_tokens` rows, else blockwise. Both kernels touch O(d_out·d_in) numbers per call whatever the
    # token count (an unmerged SMoA layer is never as cheap as the base; merge for generation), and fused was the
    # faster of the two from a single token on (benchmarks/RESULTS.md), hence the default of 1.
    kernel: str = "auto"
    fuse_min_tokens: int = 1
    other_param_names: tuple[str, ...] = (
        "r",
        "branch_ranks",
        "lora_alpha",
        "scaling",
        "permutation",
        "fingerprint_check",
        "smoa_dropout",
        "smoa_row_order",
        "smoa_col_order",
    )

    def __init__(self, base_layer: nn.Module, module_name: str = "", **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.module_name = module_name
        self.r: dict[str, int] = {}
        self.branch_ranks: dict[str, list[int]] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.permutation: dict[str, tuple[str, int]] = {}
        self.fingerprint_check: dict[str, str] = {}
        self.smoa_dropout = nn.ModuleDict({})
        self.smoa_A = nn.ModuleDict({})
        self.smoa_B = nn.ModuleDict({})
        self.smoa_row_order = BufferDict({}, persistent=True)
        self.smoa_col_order = BufferDict({}, persistent=True)
        # kept out of other_param_names: PEFT casts float buffers listed there to the base dtype
        self.smoa_fingerprint = BufferDict({}, persistent=True)
        self._base_fingerprint: Tensor | None = None
        # adapters whose order buffers are known to hold real orders; avoids reading a buffer (a device sync) on
        # every forward to see whether a checkpoint or the SVD filled it
        self._orders_ready: set[str] = set()
        self._original_weight: Tensor | None = None
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs

        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            self.in_features, self.out_features = base.in_features, base.out_features
        elif isinstance(base, Conv1D):
            shape = base.weight.ds_shape if hasattr(base.weight, "ds_shape") else base.weight.shape
            self.in_features, self.out_features = shape
        else:
            raise UnsupportedLayerError(unsupported_layer_message(module_name, base))
        self.register_load_state_dict_post_hook(_check_loaded_state)

    # ----------------------------------------------------------------------------------------------- weights
    def effective_weight(self) -> Tensor:
        """The current base weight as ``(d_out, d_in)`` (a view; Conv1D stores it transposed)."""
        weight = self.get_base_layer().weight
        return weight.T if self.fan_in_fan_out else weight

    def original_weight(self) -> Tensor:
        """``W0 (d_out, d_in)`` as before any merge: the anchors of every adapter come from it."""
        if self._original_weight is None:
            return self.effective_weight()
        weight = self.get_base_layer().weight
        original = self._original_weight.to(device=weight.device, dtype=weight.dtype)
        return original.T if self.fan_in_fan_out else original

    def _to_storage_layout(self, delta: Tensor) -> Tensor:
        return delta.T if self.fan_in_fan_out else delta

    def anchor_source(self) -> Tensor | BlockAnchors:
        """Where the blockwise kernel reads the anchors: the original ``W0 (d_out, d_in)`` itself for a float base."""
        return self.original_weight()

    def anchors_require_grad(self) -> bool:
        """Whether the anchors carry a gradient (a trainable base weight), which only the reference kernel handles."""
        return self._original_weight is None and self.get_base_layer().weight.requires_grad

    def check_base_weight(self) -> None:
        """Refuse a base whose stored weight is not ``W0`` itself (see :func:`check_float_weight`), before any SVD."""
        check_float_weight(self.get_base_layer(), self.module_name)

    # ------------------------------------------------------------------------------------------ adapter setup
    def update_layer(self, adapter_name: str, config: SMoAConfig, **kwargs: Any) -> None:
        """Add (or replace) adapter ``adapter_name`` with the settings of ``config``."""
        ranks = config.ranks
        num_blocks = config.num_blocks
        self.check_base_weight()
        smaller = min(self.out_features, self.in_features)
        if num_blocks > smaller:
            raise ValueError(
                f"SMoAConfig.num_blocks={num_blocks} is larger than the smaller dimension ({smaller}) of module "
                f"'{self.module_name}' (shape {self.out_features}x{self.in_features}); use num_blocks <= {smaller} or "
                "exclude this module."
            )
        rows, cols = F.split_sizes(self.out_features, num_blocks), F.split_sizes(self.in_features, num_blocks)
        for k, (r_k, n, c) in enumerate(zip(ranks, rows, cols, strict=True)):
            if r_k > min(n, c):
                raise ValueError(
                    f"SMoAConfig r={config.r} gives block {k} of module '{self.module_name}' rank {r_k}, more than its "
                    f"block size {n}x{c} allows (the extra parameters could learn nothing); use r <= "
                    f"{num_blocks * min(min(rows), min(cols))} for this module, or exclude it."
                )
        self.r[adapter_name] = config.r
        self.branch_ranks[adapter_name] = ranks
        self.lora_alpha[adapter_name] = config.lora_alpha
        self.scaling[adapter_name] = config.scaling
        self.permutation[adapter_name] = (config.permutation, config.permutation_seed)
        self.fingerprint_check[adapter_name] = config.base_fingerprint_check
        dropout = nn.Dropout(p=config.lora_dropout) if config.lora_dropout > 0.0 else nn.Identity()
        self.smoa_dropout[adapter_name] = dropout
        self.smoa_A[adapter_name] = nn.ParameterList(
            [nn.Parameter(torch.empty(r_k, c)) for r_k, c in zip(ranks, cols, strict=True)]
        )
        self.smoa_B[adapter_name] = nn.ParameterList(
            [nn.Parameter(torch.empty(n, r_k)) for n, r_k in zip(rows, ranks, strict=True)]
        )
        self.reset_smoa_parameters(adapter_name, config.init_lora_weights)

        weight = self.get_base_layer().weight
        on_meta = weight.device.type == "meta"
        self._orders_ready.discard(adapter_name)
        self.smoa_row_order[adapter_name] = torch.full((self.out_features,), _UNSET, dtype=torch.long)
        self.smoa_col_order[adapter_name] = torch.full((self.in_features,), _UNSET, dtype=torch.long)
        self.smoa_fingerprint[adapter_name] = torch.full((9,), math.nan, dtype=torch.float64)
        if not on_meta:
            with gather_params_ctx(weight):
                original = self.original_weight()
                check_finite(original, self.module_name)
                self._base_fingerprint = weight_fingerprint(original)
                if not getattr(config, "_from_checkpoint", False):
                    self.smoa_fingerprint[adapter_name] = self._base_fingerprint.clone()
                if not getattr(config, "_orders_from_checkpoint", False):
                    self._compute_orders(adapter_name, original)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def reset_smoa_parameters(self, adapter_name: str, init_lora_weights: bool = True) -> None:
        """A_k Kaiming-uniform (a=√5); B_k zeros (identity at init), or Kaiming-uniform if not ``init_lora_weights``."""
        for a_k in self.smoa_A[adapter_name]:
            nn.init.kaiming_uniform_(a_k, a=math.sqrt(5))
        for b_k in self.smoa_B[adapter_name]:
            if init_lora_weights:
                nn.init.zeros_(b_k)
            else:
                nn.init.kaiming_uniform_(b_k, a=math.sqrt(5))

    def _compute_orders(self, adapter_name: str, original: Tensor) -> None:
        permutation, seed = self.permutation[adapter_name]
        row_order, col_order = F.block_orders(original, permutation, seed)
        device = self.smoa_row_order[adapter_name].device
        self.smoa_row_order[adapter_name] = row_order.to(device)
        self.smoa_col_order[adapter_name] = col_order.to(device)
        self._orders_ready.add(adapter_name)

    def orders(self, adapter_name: str) -> tuple[Tensor, Tensor]:
        """``(row_order, col_order)`` of an adapter, computing them by SVD if a checkpoint did not provide them."""
        row_order, col_order = self.smoa_row_order[adapter_name], self.smoa_col_order[adapter_name]
        if adapter_name in self._orders_ready:
            return row_order, col_order
        if bool(row_order[0] != _UNSET):  # filled by a checkpoint
            self._orders_ready.add(adapter_name)
        else:
            weight = self.get_base_layer().weight
            with gather_params_ctx(weight):
                original = self.original_weight()
                check_finite(original, self.module_name)
                self._compute_orders(adapter_name, original)
            row_order, col_order = self.smoa_row_order[adapter_name], self.smoa_col_order[adapter_name]
        return row_order, col_order

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._orders_ready.discard(adapter_name)
        if adapter_name in self.smoa_fingerprint:
            del self.smoa_fingerprint[adapter_name]

    # ------------------------------------------------------------------------------------------------- math
    def get_delta_weight(self, adapter_name: str, dtype: torch.dtype | None = None) -> Tensor:
        """Dense ``ΔW`` of an adapter in the layer's weight layout (``(d_in, d_out)`` for Conv1D).

        Computed in float32 at least (fp16/bf16 factors are upcast) and returned in ``dtype`` (default: base dtype).
        """
        a, b = list(self.smoa_A[adapter_name]), list(self.smoa_B[adapter_name])
        row_order, col_order = self.orders(adapter_name)
        original = self.original_weight()
        compute_dtype = torch.float32 if a[0].dtype in (torch.float16, torch.bfloat16) else a[0].dtype
        delta = F.delta_weight(
            original,
            row_order,
            col_order,
            [t.to(compute_dtype) for t in a],
            [t.to(compute_dtype) for t in b],
            self.scaling[adapter_name],
        )
        return self._to_storage_layout(delta).to(dtype or original.dtype)

    def delta_output(self, x: Tensor, adapter_name: str, into: Tensor | None = None) -> Tensor:
        """``dropout(x) ΔWᵀ`` of one adapter, ``x (..., d_in)`` → ``(..., d_out)`` in the adapter's dtype.

        With ``into`` (``(..., d_out)``), returns ``into + dropout(x) ΔWᵀ`` in ``into``'s dtype, computed in place in
        ``into`` by the blockwise kernel (see :meth:`add_delta_output` for when that is safe).
        """
        a, b = list(self.smoa_A[adapter_name]), list(self.smoa_B[adapter_name])
        row_order, col_order = self.orders(adapter_name)
        x = self.smoa_dropout[adapter_name](self._cast_input_dtype(x, a[0].dtype))
        if self.anchors_require_grad() or self.kernel == "reference":
            weight = self.original_weight()
            delta = F.delta_output(x, weight, row_order, col_order, a, b, self.scaling[adapter_name])
            return delta if into is None else into + delta.to(into.dtype)
        source = self.anchor_source()
        return blockwise_delta_output(x, source, row_order, col_order, a, b, self.scaling[adapter_name], into=into)

    def add_delta_output(self, result: Tensor, x: Tensor, adapter_name: str) -> Tensor:
        """``result + dropout(x) ΔWᵀ`` in ``result``'s dtype; in place in ``result`` when that is safe."""
        in_place = (
            self.kernel != "reference"
            and not self.anchors_require_grad()
            and output_is_private(result, self.get_base_layer())
        )
        if in_place:
            return self.delta_output(x, adapter_name, into=result)
        return result + self.delta_output(x, adapter_name).to(result.dtype)

    def _fusable(self, x: Tensor, adapters: list[str], args: tuple, kwargs: dict) -> bool:
        if self.kernel not in ("auto", "fused") or len(adapters) != 1 or args or kwargs:
            return False
        dropout = self.smoa_dropout[adapters[0]]
        if isinstance(dropout, nn.Dropout) and dropout.training:
            return False
        base = self.get_base_layer()
        if base.weight.requires_grad or base._forward_hooks or base._forward_pre_hooks or hasattr(base, "_hf_hook"):
            return False
        # W0 + ΔW is formed in the compute dtype: in bf16/fp16 (or under autocast) rounding it to 8-11 significant
        # bits would swallow updates smaller than W0's last bit, which the separate base + branch sum keeps.
        if base.weight.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(x.device.type):
            return False
        return self.kernel == "fused" or x.numel() >= self.fuse_min_tokens * self.in_features

    def fused_forward(self, x: Tensor, adapter_name: str) -> Tensor:
        """Base layer and adapter in one matmul: ``x (W0 + ΔW)ᵀ + bias`` (no dropout on this path)."""
        a, b = list(self.smoa_A[adapter_name]), list(self.smoa_B[adapter_name])
        row_order, col_order = self.orders(adapter_name)
        base = self.get_base_layer()
        x = self._cast_input_dtype(x, base.weight.dtype)
        return fused_linear(
            x, self.original_weight(), base.bias, row_order, col_order, a, b, self.scaling[adapter_name]
        )

    # ------------------------------------------------------------------------------------------- merging
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """``W ← W0 + Σ ΔW`` for the given (default: active) adapters, every ΔW anchored on the original ``W0``."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [name for name in adapter_names if name in self.smoa_A]
        if not adapter_names:
            return
        base = self.get_base_layer()
        weight = base.weight
        delta = sum(self.get_delta_weight(name, dtype=torch.float32) for name in adapter_names)
        merged = weight.data.float() + delta
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(
                f"Merging adapter(s) {adapter_names} into module '{self.module_name}' gives NaN/Inf weights; "
                "the adapter is broken. The base weight was left unchanged."
            )
        if self._original_weight is None:
            self._original_weight = weight.data.detach().to("cpu", copy=True)
        weight.data.copy_(merged.to(weight.dtype))
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Restore the original weight exactly (all merged adapters are taken out at once)."""
        if not self.merged:
            warnings.warn(f"Module '{self.module_name}' is not merged; nothing to unmerge.", stacklevel=2)
            return
        weight = self.get_base_layer().weight
        weight.data.copy_(self._original_weight.to(device=weight.device, dtype=weight.dtype))
        self._original_weight = None
        self.merged_adapters.clear()


class Linear(nn.Module, SMoALayer):
    """SMoA around an ``nn.Linear`` or a transformers ``Conv1D`` (``fan_in_fan_out=True``)."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: SMoAConfig,
        fan_in_fan_out: bool = False,
        module_name: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        SMoALayer.__init__(self, base_layer, module_name=module_name, **kwargs)
        self.fan_in_fan_out = fan_in_fan_out
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        adapters = [name for name in self.active_adapters if name in self.smoa_A]
        if self._fusable(x, adapters, args, kwargs):
            return self.fused_forward(x, adapters[0])
        result = self.base_layer(x, *args, **kwargs)
        for adapter_name in adapters:
            result = self.add_delta_output(result, x, adapter_name)
        return result

    def __repr__(self) -> str:
        return "smoa." + super().__repr__()


def output_is_private(result: Tensor, base: nn.Module) -> bool:
    """Whether the base layer's output ``result`` may be written in place: no one else can hold it.

    Not when a forward hook (on ``base`` or global) may have kept it, when it is a view of another tensor
    (``result._base``) or not contiguous, when it is a leaf that requires grad, or under ``torch.compile`` (which
    traces functionally). The global hooks and ``_base`` are torch internals: if a torch release drops either
    attribute, the answer is "not private" and the branch is added out of place (same values, one extra tensor).
    """
    global_hooks = getattr(torch.nn.modules.module, "_global_forward_hooks", None)
    return (
        global_hooks is not None
        and not global_hooks
        and not base._forward_hooks
        and result.is_contiguous()
        and getattr(result, "_base", result) is None
        and not (result.is_leaf and result.requires_grad)
        and not torch.compiler.is_compiling()
    )


def unsupported_layer_message(module_name: str, module: nn.Module) -> str:
    return (
        f"SMoA cannot adapt module '{module_name}' of type {type(module).__module__}.{type(module).__qualname__}: "
        "only torch.nn.Linear, transformers' Conv1D and bitsandbytes' Linear4bit / Linear8bitLt are supported "
        "(quantised layers of other libraries, e.g. GPTQ, AWQ or HQQ, store codes SMoA cannot anchor on). Load the "
        "base in float or with transformers' BitsAndBytesConfig, or remove the module from target_modules (or add "
        "it to exclude_modules)."
    )


def check_float_weight(base: nn.Module, module_name: str) -> None:
    """Refuse a base layer whose stored weight is not a plain floating-point matrix (quantised codes, packed
    storage, integer dtypes): its entries are not W0, and anchoring on them would silently train the wrong update.
    (bitsandbytes layers are wrapped by :mod:`smoa.adapter.bnb`, which dequantises them, and never get here.)"""
    weight = getattr(base, "weight", None)
    kind = f"{type(base).__module__}.{type(base).__qualname__}"
    if weight is None or not torch.is_floating_point(weight) or type(weight).__name__ not in ("Parameter", "Tensor"):
        what = "no weight" if weight is None else f"a {type(weight).__name__} of dtype {weight.dtype}"
        raise UnsupportedLayerError(
            f"module '{module_name}' ({kind}) stores {what}, not a floating-point weight matrix: SMoA anchors its "
            "blocks on W0 itself and cannot read it from quantised or packed storage (only bitsandbytes 4-bit and "
            "8-bit bases are dequantised for it). Load the base in float32/bfloat16/float16 or with transformers' "
            "BitsAndBytesConfig, or exclude this module."
        )


def check_finite(weight: Tensor, module_name: str) -> None:
    """Refuse NaN/Inf in a base weight before any SVD (which would fail or give meaningless orders)."""
    finite = torch.isfinite(weight)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"The base weight of module '{module_name}' has {bad} NaN/Inf entries; SMoA's spectral orders need a "
            "finite weight. Check the checkpoint the base model was loaded from."
        )


def _check_loaded_state(module: nn.Module, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: loaded orders must be permutations, loaded fingerprints must match the base."""
    if not isinstance(module, SMoALayer):
        return
    for adapter_name in list(module.smoa_row_order.keys()):
        row_order, col_order = module.smoa_row_order[adapter_name], module.smoa_col_order[adapter_name]
        if bool(row_order[0] != _UNSET):
            check_order(row_order, module.out_features, f"smoa_row_order of module '{module.module_name}'")
            check_order(col_order, module.in_features, f"smoa_col_order of module '{module.module_name}'")
        saved = module.smoa_fingerprint[adapter_name]
        actual = module._base_fingerprint
        mode = module.fingerprint_check.get(adapter_name, "error")
        if mode == "off" or actual is None:
            continue
        if not bool(torch.isfinite(saved).all()):
            message = (
                f"Adapter '{adapter_name}' of module '{module.module_name}' has no finite base fingerprint "
                f"('{module.module_name}.smoa_fingerprint' is missing from the adapter file or not finite), so it "
                "cannot be checked against this base. Save the adapter again with smoa, or, to accept an unchecked "
                "base, load the config with SMoAConfig.from_pretrained(dir), set base_fingerprint_check='off', and "
                "pass config=... to PeftModel.from_pretrained."
            )
        elif not fingerprints_match(saved, actual):
            message = (
                f"Adapter '{adapter_name}' of module '{module.module_name}' was trained on a different base weight "
                f"(saved fingerprint norm {float(saved[0]):.6g}, this base {float(actual[0]):.6g}). Its block anchors "
                "would come from the wrong weights and silently change the model. Load it onto the base it was made "
                "for, or, if you mean it, load the config with SMoAConfig.from_pretrained(dir), set "
                "base_fingerprint_check='warn' or 'off', and pass config=... to PeftModel.from_pretrained."
            )
        else:
            continue
        if mode == "error":
            raise AdapterFileError(message)
        warnings.warn(message, stacklevel=2)


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
