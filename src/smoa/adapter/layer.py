"""The SMoA tuner layer: holds per-adapter state and calls the pure functions of :mod:`.functional`.

State per adapter (dicts keyed by adapter name, so several adapters live side by side):

* trainable: ``smoa_A[name][k]`` ``(r_k, |C_k|)`` and ``smoa_B[name][k]`` ``(|R_k|, r_k)``;
* persistent buffers: ``smoa_row_order[name]`` ``(d_out,)``, ``smoa_col_order[name]`` ``(d_in,)`` (int64) and
  ``smoa_fingerprint[name]`` (float64, the base weight's signature);
* nothing of size ``d_out × d_in``: anchors are gathered from the base weight when needed.

The layer's other jobs each live in a small module of their own: which kernel runs a forward and whether the branch
is added in place (:mod:`.kernel_choice`), the original weight kept while merged (:mod:`.merge_snapshot`), the checks
of the base layer (:mod:`.base_checks`) and of a loaded state (:mod:`.loaded_state`).
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

from . import functional as F
from .autograd import BlockAnchors, blockwise_delta_output, fused_linear
from .base_checks import check_block_sizes, check_finite, check_float_weight, dense_dims
from .checkpoint import weight_fingerprint
from .config import SMoAConfig
from .kernel_choice import add_in_place, branch_kernel, use_fused_kernel
from .loaded_state import check_adapter_state, check_loaded_state, order_is_set, unset_order
from .merge_snapshot import MergeSnapshot


class SMoALayer(BaseTunerLayer):
    """Mixin with the SMoA state of one adapted layer; :class:`Linear` is the concrete module."""

    adapter_layer_names: tuple[str, ...] = ("smoa_A", "smoa_B")
    #: how the unmerged forward is computed, one of :data:`.kernel_choice.KERNELS` (all exact; see there)
    kernel: str = "auto"
    #: input rows from which ``kernel="auto"`` takes the fused kernel
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
        self.merge_snapshot: MergeSnapshot[Any] = MergeSnapshot()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        self.in_features, self.out_features = dense_dims(self.get_base_layer(), module_name)
        self.register_load_state_dict_post_hook(check_loaded_state)

    # ----------------------------------------------------------------------------------------------- weights
    def effective_weight(self) -> Tensor:
        """The current base weight as ``(d_out, d_in)`` (a view; Conv1D stores it transposed)."""
        weight = self.get_base_layer().weight
        return weight.T if self.fan_in_fan_out else weight

    def original_weight(self) -> Tensor:
        """``W0 (d_out, d_in)`` as before any merge: the anchors of every adapter come from it."""
        if not self.merge_snapshot.taken:
            return self.effective_weight()
        weight = self.get_base_layer().weight
        original = self.merge_snapshot.original.to(device=weight.device, dtype=weight.dtype)
        return original.T if self.fan_in_fan_out else original

    def _to_storage_layout(self, delta: Tensor) -> Tensor:
        return delta.T if self.fan_in_fan_out else delta

    def anchor_source(self) -> Tensor | BlockAnchors:
        """Where the blockwise kernel reads the anchors: the original ``W0 (d_out, d_in)`` itself for a float base."""
        return self.original_weight()

    def anchors_require_grad(self) -> bool:
        """Whether the anchors carry a gradient (a trainable base weight), which only the reference kernel handles."""
        return not self.merge_snapshot.taken and self.get_base_layer().weight.requires_grad

    def check_base_weight(self) -> None:
        """Refuse a base whose stored weight is not ``W0`` itself (see :func:`check_float_weight`), before any SVD."""
        check_float_weight(self.get_base_layer(), self.module_name)

    #: buffers a saved adapter may lack (:mod:`smoa.peft_integration.load_gate`): the orders (then computed by SVD)
    #: and the fingerprint (then refused unless ``base_fingerprint_check`` is ``"off"``)
    optional_saved = ("smoa_row_order", "smoa_col_order", "smoa_fingerprint")

    def check_loaded_adapter(self, adapter_name: str, missing: frozenset[str] = frozenset()) -> None:
        """The load gate's check of this layer for ``adapter_name`` (nothing if it does not hold it): orders that
        are permutations, a fingerprint that matches the base; ``missing`` names the optional buffers not saved."""
        if adapter_name in self.smoa_A:
            check_adapter_state(self, adapter_name, fingerprint_saved="smoa_fingerprint" not in missing)

    # ------------------------------------------------------------------------------------------ adapter setup
    def update_layer(self, adapter_name: str, config: SMoAConfig, **kwargs: Any) -> None:
        """Add (or replace) adapter ``adapter_name`` with the settings of ``config``."""
        ranks = config.ranks
        self.check_base_weight()
        rows, cols = check_block_sizes(
            self.out_features, self.in_features, config.num_blocks, ranks, config.r, self.module_name
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
        self._init_orders_and_fingerprint(adapter_name, config)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _init_orders_and_fingerprint(self, adapter_name: str, config: SMoAConfig) -> None:
        """Unset orders and a NaN fingerprint, then (unless the base is on the meta device) the base's fingerprint
        and, unless a checkpoint will bring them, the orders by SVD of ``W0``."""
        weight = self.get_base_layer().weight
        self._orders_ready.discard(adapter_name)
        self.smoa_row_order[adapter_name] = unset_order(self.out_features)
        self.smoa_col_order[adapter_name] = unset_order(self.in_features)
        self.smoa_fingerprint[adapter_name] = torch.full((9,), math.nan, dtype=torch.float64)
        if weight.device.type == "meta":
            return
        with gather_params_ctx(weight):
            original = self.original_weight()
            check_finite(original, self.module_name)
            self._base_fingerprint = weight_fingerprint(original)
            if not getattr(config, "_from_checkpoint", False):
                self.smoa_fingerprint[adapter_name] = self._base_fingerprint.clone()
            if not getattr(config, "_orders_from_checkpoint", False):
                self._compute_orders(adapter_name, original)

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
        if order_is_set(row_order):  # filled by a checkpoint
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
        Every merge goes through here, so the load gate's layer check runs again first: the orders or the base may
        have been changed in memory since the adapter was loaded.
        """
        self.check_loaded_adapter(adapter_name)
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
        if branch_kernel(self.kernel, self.anchors_require_grad()) == "reference":
            weight = self.original_weight()
            delta = F.delta_output(x, weight, row_order, col_order, a, b, self.scaling[adapter_name])
            return delta if into is None else into + delta.to(into.dtype)
        source = self.anchor_source()
        return blockwise_delta_output(x, source, row_order, col_order, a, b, self.scaling[adapter_name], into=into)

    def add_delta_output(self, result: Tensor, x: Tensor, adapter_name: str) -> Tensor:
        """``result + dropout(x) ΔWᵀ`` in ``result``'s dtype; in place in ``result`` when
        :func:`.kernel_choice.add_in_place` says that is safe."""
        if add_in_place(self.kernel, self.anchors_require_grad(), result, self.get_base_layer()):
            return self.delta_output(x, adapter_name, into=result)
        return result + self.delta_output(x, adapter_name).to(result.dtype)

    def _fusable(self, x: Tensor, adapters: list[str], args: tuple, kwargs: dict) -> bool:
        """Whether this forward takes the fused kernel (:func:`.kernel_choice.use_fused_kernel`)."""
        dropouts = [self.smoa_dropout[name] for name in adapters]
        has_forward_args = bool(args or kwargs)
        return use_fused_kernel(
            self.kernel, x, self.get_base_layer(), dropouts, has_forward_args, self.in_features, self.fuse_min_tokens
        )

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
        """``W ← W + Σ ΔW`` for the given (default: active) adapters, every ΔW anchored on the original ``W0``
        (kept by :attr:`merge_snapshot` from the first merge on, so merging one by one equals the batch merge)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [name for name in adapter_names if name in self.smoa_A]
        if not adapter_names:
            return
        weight = self.get_base_layer().weight
        delta = sum(self.get_delta_weight(name, dtype=torch.float32) for name in adapter_names)
        merged = weight.data.float() + delta
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(
                f"Merging adapter(s) {adapter_names} into module '{self.module_name}' gives NaN/Inf weights; "
                "the adapter is broken. The base weight was left unchanged."
            )
        self.merge_snapshot.keep_first(lambda: weight.data.detach().to("cpu", copy=True))
        weight.data.copy_(merged.to(weight.dtype))
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Restore the original weight exactly (all merged adapters are taken out at once)."""
        if not self.merged:
            warnings.warn(f"Module '{self.module_name}' is not merged; nothing to unmerge.", stacklevel=2)
            return
        weight = self.get_base_layer().weight
        weight.data.copy_(self.merge_snapshot.release().to(device=weight.device, dtype=weight.dtype))
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
