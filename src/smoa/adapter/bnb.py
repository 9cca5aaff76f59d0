"""SMoA on bitsandbytes bases: ``Linear4bit`` (nf4 / fp4, with or without double quantisation) and ``Linear8bitLt``.

``W0`` is the DEQUANTISED weight wherever SMoA reads it: the SVD of the block orders, the base fingerprint, the
anchors ``M_k = W0[R_k][:, C_k]`` and merging. The stored codes are never read as ``W0``.

* 4-bit: ``W0 = dequantize_4bit(codes, quant_state)``: every ``blocksize`` consecutive entries of the row-major weight
  share one absmax scale (itself 8-bit quantised under double quantisation) and index a 16-value code book.
* 8-bit (LLM.int8): ``W0[i, j] = codes[i, j] · SCB[i] / 127`` (row-wise absmax scales ``SCB``).

Forward: the quantised layer's own output (bitsandbytes' kernel, in its compute dtype) plus the blockwise SMoA branch
(in the factors' dtype, cast to the output's, as PEFT's LoRA does on these bases). The branch's anchors are
dequantised afresh on every call, in forward and again in backward, block by block: only the rows ``R_k`` of a block
(a few at a time for 4-bit) are dequantised before its columns ``C_k`` are gathered, so neither a full-precision
``(d_out, d_in)`` matrix nor the anchors outlive the call.

Merge: ``W ← requant(W0 + Σ ΔW)`` over every merged adapter, from the ORIGINAL ``W0`` (so merging adapters one after
another gives exactly the batch merge), with a warning: a merged quantised layer differs from the unmerged adapter by
one requantisation rounding. The original quantised parameter (packed codes, not a float copy) is kept while merged,
so unmerging restores it bit for bit. To deploy onto a full-precision copy of the base, see
:func:`smoa.adapter.deploy.merge_into_full_precision` and ``docs/quantized.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import bitsandbytes as bnb
import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils.integrations import dequantize_bnb_weight
from torch import Tensor, nn

from smoa.dense import UnsupportedLayerError

from .config import SMoAConfig
from .layer import Linear

#: entries of ``W0`` dequantised at a time while gathering 4-bit anchors (rows of a block, in chunks)
_DEQUANT_CHUNK = 1 << 20


class DequantizedAnchors:
    """:class:`smoa.adapter.autograd.BlockAnchors` of a quantised SMoA layer: its original ``W0``'s blocks, each
    dequantised on request (``shape = (d_out, d_in)``)."""

    def __init__(self, layer: QuantizedLinear) -> None:
        self.layer = layer
        self.shape = (layer.out_features, layer.in_features)

    def gather(self, blocks: Sequence[tuple[Tensor, Tensor]], dtype: torch.dtype) -> list[Tensor]:
        """``[W0[R_k][:, C_k] for (R_k, C_k) in blocks]`` in ``dtype``, from the original quantised weight."""
        param = self.layer.quantized_original()
        return [self.layer.dequantize_block(param, rows, cols).to(dtype) for rows, cols in blocks]


class QuantizedLinear(Linear):
    """SMoA around a bitsandbytes layer: ``W0`` is read through :meth:`dequantize` (subclasses: 4-bit, 8-bit)."""

    bits: int = 0

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: SMoAConfig, module_name: str = "", **kwargs: Any
    ) -> None:
        super().__init__(base_layer, adapter_name, config, fan_in_fan_out=False, module_name=module_name, **kwargs)

    # ------------------------------------------------------------------------------ what subclasses provide
    def dequantize(self, param: nn.Parameter) -> Tensor:
        """The full ``(d_out, d_in)`` float weight a quantised parameter stands for."""
        raise NotImplementedError

    def dequantize_block(self, param: nn.Parameter, rows: Tensor, cols: Tensor) -> Tensor:
        """``dequantize(param)[rows][:, cols]``, bit for bit, without forming the full matrix where possible."""
        raise NotImplementedError

    def requantize(self, weight: Tensor, like: nn.Parameter) -> nn.Parameter:
        """A new quantised parameter for the float ``weight (d_out, d_in)``, with the settings of ``like``."""
        raise NotImplementedError

    def install(self, param: nn.Parameter) -> None:
        """Make ``param`` the base layer's weight (and reset the state bitsandbytes derives from it)."""
        raise NotImplementedError

    def keep_original(self) -> nn.Parameter:
        """The base layer's current quantised parameter, as kept while merged for an exact unmerge."""
        return self.get_base_layer().weight

    # ------------------------------------------------------------------------------------------- weights
    def quantized_original(self) -> nn.Parameter:
        """The quantised parameter holding the original ``W0`` (the kept one while merged)."""
        return self.merge_snapshot.original if self.merge_snapshot.taken else self.get_base_layer().weight

    def effective_weight(self) -> Tensor:
        """The current base weight, dequantised: ``(d_out, d_in)``, a fresh tensor."""
        return self.dequantize(self.get_base_layer().weight)

    def original_weight(self) -> Tensor:
        """``W0 (d_out, d_in)``, dequantised from the original quantised parameter (a fresh tensor)."""
        return self.dequantize(self.quantized_original())

    def anchor_source(self) -> DequantizedAnchors:
        return DequantizedAnchors(self)

    def anchors_require_grad(self) -> bool:
        return False

    def _fusable(self, x: Tensor, adapters: list[str], args: tuple, kwargs: dict) -> bool:
        # the output is bitsandbytes' own quantised matmul plus the branch, never a matmul with a dequantised W0 + ΔW
        return False

    # ------------------------------------------------------------------------------------------- merging
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """``W ← requant(W0 + Σ ΔW)`` over the already merged and the given (default: active) adapters."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [name for name in adapter_names if name in self.smoa_A]
        if not adapter_names:
            return
        original = self.quantized_original()
        delta = sum(self.get_delta_weight(name, dtype=torch.float32) for name in self.merged_adapters + adapter_names)
        merged = self.dequantize(original).float() + delta
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(
                f"Merging adapter(s) {adapter_names} into module '{self.module_name}' gives NaN/Inf weights; "
                "the adapter is broken. The base weight was left unchanged."
            )
        warnings.warn(
            f"Merging SMoA adapter(s) {adapter_names} into the {self.bits}-bit module '{self.module_name}' "
            "requantises its weight, so outputs may differ slightly from the unmerged adapter (rounding). Unmerging "
            "restores the original quantised weight exactly; to deploy without this rounding, merge onto a "
            "full-precision copy of the base (smoa.adapter.deploy.merge_into_full_precision).",
            stacklevel=2,
        )
        self.merge_snapshot.keep_first(self.keep_original)
        self.install(self.requantize(merged, original))
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Put the original quantised parameter back (exact: nothing is requantised)."""
        if not self.merged:
            warnings.warn(f"Module '{self.module_name}' is not merged; nothing to unmerge.", stacklevel=2)
            return
        self.install(self.merge_snapshot.release())
        self.merged_adapters.clear()


class Linear4bit(QuantizedLinear):
    """SMoA around a ``bitsandbytes.nn.Linear4bit`` (nf4 or fp4, any block size, with or without double quant)."""

    bits = 4

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: SMoAConfig, module_name: str = "", **kwargs: Any
    ) -> None:
        _use_standard_cpu_layout(base_layer.get_base_layer() if isinstance(base_layer, BaseTunerLayer) else base_layer)
        super().__init__(base_layer, adapter_name, config, module_name=module_name, **kwargs)

    def check_base_weight(self) -> None:
        base = self.get_base_layer()
        weight = base.weight
        state = getattr(weight, "quant_state", None)
        if not isinstance(weight, bnb.nn.Params4bit) or not weight.bnb_quantized or state is None:
            raise UnsupportedLayerError(
                f"module '{self.module_name}' (bitsandbytes.nn.Linear4bit) holds a weight that is not quantised yet "
                f"({type(weight).__name__} of dtype {weight.dtype}, shape {tuple(weight.shape)}), so SMoA cannot read "
                "W0 from it. Move the model to its device first (bitsandbytes quantises on .to(...)), or load it with "
                "transformers' BitsAndBytesConfig."
            )
        if tuple(state.shape) != (self.out_features, self.in_features):
            raise UnsupportedLayerError(
                f"module '{self.module_name}' (bitsandbytes.nn.Linear4bit) has a 4-bit weight of shape "
                f"{tuple(state.shape)}, not (out_features, in_features) = ({self.out_features}, {self.in_features}); "
                "SMoA cannot anchor on it. Exclude this module."
            )

    def dequantize(self, param: nn.Parameter) -> Tensor:
        return dequantize_bnb_weight(param, state=param.quant_state)

    def dequantize_block(self, param: nn.Parameter, rows: Tensor, cols: Tensor) -> Tensor:
        state = param.quant_state
        d_out, d_in = state.shape
        if d_in % state.blocksize or d_in % 2 or not param.data.is_contiguous():
            # rows do not start at a quantisation block: dequantise all of W0 once (transient)
            return self.dequantize(param).index_select(0, rows).index_select(1, cols)
        codes = param.data.view(torch.uint8).reshape(d_out, d_in // 2)  # two 4-bit codes per byte, row-major
        scales = _block_scales(state).reshape(d_out, d_in // state.blocksize)
        anchor = torch.empty((rows.shape[0], cols.shape[0]), dtype=state.dtype, device=param.device)
        step = max(1, _DEQUANT_CHUNK // d_in)
        for start in range(0, rows.shape[0], step):
            chunk = rows[start : start + step]
            chunk_state = bnb.functional.QuantState(
                absmax=scales.index_select(0, chunk).reshape(-1),
                shape=torch.Size((chunk.shape[0], d_in)),
                dtype=state.dtype,
                blocksize=state.blocksize,
                quant_type=state.quant_type,
            )
            staged = bnb.functional.dequantize_4bit(codes.index_select(0, chunk).reshape(-1, 1), chunk_state)
            anchor[start : start + chunk.shape[0]] = staged.index_select(1, cols)
        return anchor

    def requantize(self, weight: Tensor, like: nn.Parameter) -> nn.Parameter:
        fresh = bnb.nn.Params4bit(
            weight.to(device="cpu", dtype=like.quant_state.dtype),
            requires_grad=False,
            blocksize=like.blocksize,
            compress_statistics=like.compress_statistics,
            quant_type=like.quant_type,
            quant_storage=like.quant_storage,
            module=self.get_base_layer(),
        )
        return fresh.to(like.device)  # bitsandbytes quantises on .to(device)

    def install(self, param: nn.Parameter) -> None:
        base = self.get_base_layer()
        device = base.weight.device
        if param.device != device:
            param = param.to(device)
        base.weight = param
        base.quant_state = param.quant_state


class Linear8bitLt(QuantizedLinear):
    """SMoA around a ``bitsandbytes.nn.Linear8bitLt`` holding int8 codes (``has_fp16_weights=False``)."""

    bits = 8

    def check_base_weight(self) -> None:
        base = self.get_base_layer()
        weight = base.weight
        if weight.dtype != torch.int8 or _row_scales(base, weight) is None:
            raise UnsupportedLayerError(
                f"module '{self.module_name}' (bitsandbytes.nn.Linear8bitLt) holds a {weight.dtype} weight without "
                f"int8 row scales (has_fp16_weights={base.state.has_fp16_weights}); SMoA reads W0 as codes · SCB / 127 "
                "and cannot anchor on it. Load it with BitsAndBytesConfig(load_in_8bit=True) (int8 weights), or in "
                "float."
            )

    def scales(self, param: nn.Parameter) -> Tensor:
        """``SCB (d_out,)``: the row-wise absmax scales of ``param`` (kept on the parameter, or in the layer state)."""
        return _row_scales(self.get_base_layer(), param)

    def dequantize(self, param: nn.Parameter) -> Tensor:
        return dequantize_bnb_weight(param, state=SimpleNamespace(SCB=self.scales(param)))

    def dequantize_block(self, param: nn.Parameter, rows: Tensor, cols: Tensor) -> Tensor:
        codes = param.data.index_select(0, rows).index_select(1, cols)
        return bnb.functional.int8_vectorwise_dequant(codes, self.scales(param).index_select(0, rows))

    def keep_original(self) -> nn.Parameter:
        # bitsandbytes moves the scales into the layer state on the first forward; keep them with the codes
        weight = self.get_base_layer().weight
        scales = self.scales(weight)
        return bnb.nn.Int8Params(weight.data, requires_grad=False, has_fp16_weights=False, CB=weight.data, SCB=scales)

    def requantize(self, weight: Tensor, like: nn.Parameter) -> nn.Parameter:
        fresh = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False)
        return fresh.to(like.device)  # bitsandbytes quantises on .to(device)

    def install(self, param: nn.Parameter) -> None:
        base = self.get_base_layer()
        device = base.weight.device
        if param.device != device:
            param = bnb.nn.Int8Params(
                param.data.to(device),
                requires_grad=False,
                has_fp16_weights=False,
                CB=param.data.to(device),
                SCB=param.SCB.to(device),
            )
        base.weight = param
        base.state.reset_grads()  # the next forward takes CB / SCB from the new weight


def _row_scales(base: nn.Module, param: nn.Parameter) -> Tensor | None:
    """The ``SCB`` of an int8 parameter: on the parameter until the layer's first forward, in its state after."""
    scales = getattr(param, "SCB", None)
    if scales is None and param is base.weight:
        scales = base.state.SCB
    return scales


def _block_scales(state: Any) -> Tensor:
    """The float32 absmax scale of every 4-bit quantisation block (double quantisation undone), as bitsandbytes'
    ``dequantize_4bit`` computes them, so that dequantising a subset of rows matches the full dequantisation."""
    if not state.nested:
        return state.absmax
    scales = bnb.functional.dequantize_blockwise(state.absmax, state.state2)
    scales += state.offset
    return scales.float()


def keep_standard_cpu_layout(model: nn.Module) -> None:
    """Keep every ``Linear4bit`` of ``model`` (adapted or not) in bitsandbytes' standard layout on CPU.

    The repacked layout (see :func:`_use_standard_cpu_layout`) is computed by a kernel without a backward: once an
    evaluation under ``torch.no_grad()`` has repacked a layer the adapter does not wrap (``o_proj`` when only
    ``q_proj`` / ``v_proj`` are targets), the gradients through it are wrong (torch differentiates the kernel as if
    it were constant), so training after the first evaluation would silently stop reaching the factors upstream.
    """
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            _use_standard_cpu_layout(module)


def _use_standard_cpu_layout(base: nn.Module) -> None:
    """Keep a 4-bit weight in bitsandbytes' standard layout on CPU.

    On CPUs with AVX512-BF16, bitsandbytes repacks a ``Linear4bit``'s weight at its first no-grad forward in eval mode
    and rounds the block scales to bfloat16, which changes ``W0`` under the adapter's anchors and fingerprint. SMoA
    turns that repacking off (and undoes one that already happened, as bitsandbytes does when saving), so the anchors
    always come from the weights the orders were computed on.
    """
    base.support_avx512bf16_for_cpu = False
    weight = base.weight
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        inverse = bnb.functional._convert_weight_packed_for_cpu_inverse
        weight.data, weight.quant_state = inverse(weight.data, weight.quant_state)
        base.quant_state = weight.quant_state


def dispatch_bnb(target: nn.Module, adapter_name: str, config: SMoAConfig, module_name: str) -> Linear | None:
    """Wrap a bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` target in its SMoA layer; ``None`` for anything else."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, bnb.nn.Linear4bit):
        layer_cls: type[QuantizedLinear] = Linear4bit
    elif isinstance(base, bnb.nn.Linear8bitLt):
        layer_cls = Linear8bitLt
    else:
        return None
    if config.fan_in_fan_out:
        warnings.warn(
            f"fan_in_fan_out=True but module '{module_name}' is {type(base).__qualname__}; using False for it.",
            stacklevel=3,
        )
    return layer_cls(target, adapter_name, config, module_name=module_name)


__all__ = [
    "DequantizedAnchors",
    "Linear4bit",
    "Linear8bitLt",
    "QuantizedLinear",
    "dispatch_bnb",
    "keep_standard_cpu_layout",
]
