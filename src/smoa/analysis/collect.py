"""Walk the adapted layers of PEFT models and gather the spectral measures of :mod:`smoa.analysis.spectral`.

The update of every method is read the same way: ``ΔW = W_merged − W0``. For each adapted layer the base weight is
temporarily replaced by a float64 copy, the layer's adapter is merged, the merged weight read and the layer
unmerged; the original weight tensor is then put back untouched. This covers methods whose ``get_delta_weight`` is
not the update (HiRA returns ``B A`` while its update is ``W0 ⊙ B A``; DoRA rescales columns by a magnitude).
Methods that cannot be merged (SSMLoRA: a recurrent, input-dependent branch) have no ``ΔW`` and are reported as not
analysable.

**Decision (covariance):** layer inputs are collected once, on the base model (adapters disabled), and the same
``C = XᵀX / N`` per layer serves every adapter, before and after: the comparison is between weights, not between
the slightly different activations each tuned model would feed to later layers.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from smoa._progress import progress_enabled
from smoa.methods import LayerShape, block_index, get_method

from . import spectral as S

PEFT_PREFIX = "base_model.model."
DEFAULT_NUM_BLOCKS = 2


class NotAnalysableError(ValueError):
    """An adapter whose weight update cannot be read (a method that cannot be merged)."""


# ------------------------------------------------------------------------------------------------- layers --------
def module_path(name: str) -> str:
    """A PEFT module name without the ``base_model.model.`` wrapper prefix (the base model's own path)."""
    return name.removeprefix(PEFT_PREFIX)


def adapted_layers(model: nn.Module) -> dict[str, BaseTunerLayer]:
    """Every tuner layer of ``model`` around a dense (Linear / Conv1D) weight, by base-model module path."""
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if isinstance(module.get_base_layer(), (nn.Linear, Conv1D)):
            layers[module_path(name)] = module
    return layers


def _effective(base: nn.Module, weight: Tensor) -> Tensor:
    return weight.T if isinstance(base, Conv1D) else weight


def merged_update(layer: BaseTunerLayer, adapter_name: str) -> tuple[Tensor, Tensor]:
    """``(W0, W0 + ΔW)`` of one layer as float64 ``(d_out, d_in)``, read by merging ``adapter_name`` and unmerging.

    The base weight is swapped for a float64 copy during the merge so that ``W − W0`` carries no rounding of the
    base dtype; the original tensor is restored afterwards whatever happens.
    """
    if not getattr(layer, "mergeable", True):
        raise NotAnalysableError(f"{type(layer).__name__} cannot be merged, so it has no weight update ΔW")
    if layer.merged:
        raise ValueError(
            f"layer {type(layer).__name__} already has merged adapters {layer.merged_adapters}; analyse an unmerged "
            "model (load the adapter with PeftModel.from_pretrained and do not call merge_adapter)"
        )
    base = layer.get_base_layer()
    param = base.weight
    original = param.data
    try:
        param.data = original.to(torch.float64, copy=True)
        before = _effective(base, param.data).clone()
        layer.merge(adapter_names=[adapter_name])
        after = _effective(base, param.data).clone()
        layer.unmerge()
    finally:
        param.data = original
    return before, after


# ---------------------------------------------------------------------------------------------- activations -----
@dataclass
class _Moments:
    sum_outer: Tensor
    sum: Tensor
    count: int = 0


def activation_covariances(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Iterable[Tensor],
    centre: bool = False,
    progress: bool = True,
) -> dict[str, Tensor]:
    """``C = XᵀX / N`` (or the centred covariance) of the inputs ``X (N, d_in)`` of each given layer.

    ``batches``: ``input_ids`` tensors ``(1, n)`` run through ``model`` without gradients. Inputs are read by
    forward pre-hooks on the given modules; each batch's ``XᵀX`` is formed in float32 and accumulated in float64.
    """
    moments: dict[str, _Moments] = {}
    # layers fed the same tensor in one forward (q, k, v) share its Gram matrix; holding the tensor until the batch
    # ends keeps its id from being reused by another tensor
    batch_grams: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("input", kwargs.get("x"))
            cached = batch_grams.get(id(x))
            if cached is None:
                flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
                cached = batch_grams[id(x)] = (x, (flat.T @ flat).double(), flat.double().sum(dim=0))
            _, gram, total = cached
            m = moments.get(name)
            if m is None:
                m = moments[name] = _Moments(torch.zeros_like(gram), torch.zeros_like(total))
            m.sum_outer += gram
            m.sum += total
            m.count += x.numel() // x.shape[-1]

        return hook

    batches = list(batches)
    with ExitStack() as stack:
        for name, module in layers.items():
            handle = module.register_forward_pre_hook(hook_for(name), with_kwargs=True)
            stack.callback(handle.remove)
        device = next(model.parameters()).device
        with torch.no_grad():
            for ids in tqdm(
                batches, desc="calibration", unit="text", disable=not progress_enabled(progress), leave=False
            ):
                model(input_ids=ids.to(device))
                batch_grams.clear()
    covariances = {}
    for name, m in moments.items():
        c = m.sum_outer / m.count
        if centre:
            mean = m.sum / m.count
            c = c - torch.outer(mean, mean)
        covariances[name] = c
    return covariances


# ------------------------------------------------------------------------------------------------- records -------
@dataclass
class LayerAnalysis:
    """The measures of one adapted layer for one adapter (see :mod:`smoa.analysis.spectral` for the definitions)."""

    name: str
    kind: str
    block: int | None
    d_out: int
    d_in: int
    rank: int
    relative_rank: int
    frobenius: float
    top_singular: float
    ceiling: int | None
    shift: dict[str, float]
    spectrum_before: list[float]
    spectrum_after: list[float]
    intruders: list[int]
    alignment_before: list[list[float]] | None = None
    alignment_after: list[list[float]] | None = None
    block_energy: dict[str, float] | None = None
    random_shift: dict[str, float] | None = None  # the shift of a norm-matched Gaussian update (null level)

    def head_alignment(self, when: str) -> list[float] | None:
        """``A[a, head]`` for each singular region ``a`` (``when``: ``before`` or ``after``)."""
        table = self.alignment_before if when == "before" else self.alignment_after
        return None if table is None else [row[0] for row in table]


@dataclass
class AdapterAnalysis:
    """All analysed layers of one adapter, or the reason it could not be analysed."""

    label: str
    path: str
    method: str
    settings: dict[str, Any]
    layers: list[LayerAnalysis] = field(default_factory=list)
    not_analysable: str | None = None
    num_blocks: int = DEFAULT_NUM_BLOCKS

    def summary(self) -> dict[str, Any]:
        """Means over layers: ranks, ceilings, ‖ΔW‖_F², region shifts, head alignment, intruders, block energy."""
        out: dict[str, Any] = {"label": self.label, "method": self.method, "layers": len(self.layers)}
        if self.not_analysable or not self.layers:
            out["not_analysable"] = self.not_analysable or "no adapted dense layers"
            return out
        ls = self.layers
        out["mean_rank"] = statistics.fmean(x.rank for x in ls)
        out["mean_relative_rank"] = statistics.fmean(x.relative_rank for x in ls)
        ceilings = [x.ceiling for x in ls if x.ceiling is not None]
        out["mean_ceiling"] = statistics.fmean(ceilings) if ceilings else None
        out["mean_frobenius_sq"] = statistics.fmean(x.frobenius**2 for x in ls)
        out["rank_by_kind"] = {
            kind: statistics.fmean(x.rank for x in ls if x.kind == kind) for kind in dict.fromkeys(x.kind for x in ls)
        }
        out["shift"] = {r: _nanmean(x.shift[r] for x in ls) for r in S.REGIONS}
        if all(x.random_shift for x in ls):
            out["random_shift"] = {r: _nanmean(x.random_shift[r] for x in ls) for r in S.REGIONS}
            null_tail = out["random_shift"]["tail"]
            out["tail_shift_vs_random"] = out["shift"]["tail"] / null_tail if null_tail else float("nan")
        out["intruders"] = sum(len(x.intruders) for x in ls)
        out["layers_with_intruders"] = sum(1 for x in ls if x.intruders)
        if ls[0].alignment_before is not None:
            for when in ("before", "after"):
                heads = [x.head_alignment(when) for x in ls]
                out[f"head_alignment_{when}"] = {
                    r: _nanmean(h[i] for h in heads if h is not None) for i, r in enumerate(S.REGIONS)
                }
        energies = [x.block_energy for x in ls if x.block_energy]
        if energies:
            out["block_energy"] = {o: _nanmean(e[o] for e in energies) for o in S.ORDERS}
            out["block_energy_num_blocks"] = self.num_blocks
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def _nanmean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


# ------------------------------------------------------------------------------------------------- methods -------
def peft_type_name(config: Any) -> str:
    peft_type = config.peft_type
    return str(getattr(peft_type, "value", peft_type)).upper()


def method_of(config: Any) -> str:
    """The registry name (:mod:`smoa.methods`) of a PEFT config: ``lora``, ``dora``, ``smoa``, ``mora1`` ..."""
    kind = peft_type_name(config)
    if kind == "LORA":
        return "dora" if getattr(config, "use_dora", False) else "lora"
    if kind == "MORA":
        return "mora1" if getattr(config, "mora_type", 6) == 1 else "mora"
    return kind.lower()


def registry_settings(method: str, config: Any) -> dict[str, Any] | None:
    """The registry's settings for a loaded config (None when the registry's formulas do not describe it)."""
    settings = config.to_dict()
    if method == "melora":
        ranks = list(settings.get("r") or [])
        if not ranks or len(set(ranks)) != 1:
            return None
        return {**settings, "num_minis": len(ranks), "mini_rank": ranks[0]}
    return settings


def layer_ceiling(method: str, settings: dict[str, Any] | None, name: str, d_out: int, d_in: int) -> int | None:
    """The analytic rank ceiling of ``method`` on one layer, from the method registry (None if unknown)."""
    if settings is None:
        return None
    try:
        spec = get_method(method)
    except ValueError:
        return None
    if spec.layer_rank is None:
        return None
    shape = LayerShape(name, name.rsplit(".", 1)[-1], "Linear", d_in, d_out)
    try:
        return int(spec.layer_rank(shape, spec.layer_settings(shape, settings)))
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ analysis ------
@dataclass
class _BaseLayer:
    """Measures of ``W0`` shared by every adapter (computed once per layer)."""

    spectrum: Tensor  # float64 singular values: tiny updates move them by ~1e-6 relative, below float32's resolution
    intruder_basis: Tensor
    alignment: Tensor | None
    block_energy: dict[int, dict[str, float]] = field(default_factory=dict)


class SpectralAnalyzer:
    """Analyse adapters of one base model layer by layer, caching what depends only on ``W0``.

    Args:
        covariances: layer-input covariances by module path (``activation_covariances``); None skips alignment.
        intruder_side: ``"left"`` (output space, default) or ``"right"`` singular vectors for intruder detection.
        block_energy: whether to compute the share of ``W0``'s energy in SMoA's diagonal blocks.
        seed: seed of the random order in the block-energy comparison.
    """

    def __init__(
        self,
        covariances: dict[str, Tensor] | None = None,
        intruder_side: str = "left",
        block_energy: bool = True,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        if intruder_side not in ("left", "right"):
            raise ValueError(f"intruder_side must be 'left' or 'right', got {intruder_side!r}")
        self.covariances = covariances or {}
        self.intruder_side = intruder_side
        self.block_energy = block_energy
        self.seed = seed
        self.progress = progress
        self._base: dict[str, _BaseLayer] = {}
        self._eigen: dict[str, Tensor] = {}

    def _eigenvectors(self, name: str) -> Tensor | None:
        if name not in self.covariances:
            return None
        if name not in self._eigen:
            self._eigen[name] = S.covariance_eigenbasis(self.covariances[name], torch.float32)[1]
        return self._eigen[name]

    def _intruder_vectors(self, svd: S.ThinSVD) -> Tensor:
        return svd.u if self.intruder_side == "left" else svd.v

    def _base_layer(self, name: str, w0: Tensor, num_blocks: int) -> _BaseLayer:
        base = self._base.get(name)
        if base is None:
            svd0 = S.thin_svd(w0)
            eig = self._eigenvectors(name)
            alignment = S.region_overlap(svd0.v, eig) if eig is not None else None
            spectrum = S.singular_values(w0, torch.float64)
            base = self._base[name] = _BaseLayer(spectrum, self._intruder_vectors(svd0), alignment)
        if self.block_energy and num_blocks not in base.block_energy and num_blocks <= min(w0.shape):
            base.block_energy[num_blocks] = S.block_energy_shares(w0, num_blocks, self.seed)
        return base

    def analyse_layer(
        self, name: str, w0: Tensor, w1: Tensor, method: str, settings: dict[str, Any] | None, num_blocks: int
    ) -> LayerAnalysis:
        """All measures of one layer from ``W0`` and ``W0 + ΔW`` (``(d_out, d_in)``)."""
        base = self._base_layer(name, w0, num_blocks)
        delta = w1 - w0
        size = S.update_size(delta)
        svd1 = S.thin_svd(w1)
        shift = S.spectrum_shift(base.spectrum, S.singular_values(w1, torch.float64))
        noisy = w0 + S.random_update_like(delta, self.seed)
        null = S.spectrum_shift(base.spectrum, S.singular_values(noisy, torch.float64))
        eig = self._eigenvectors(name)
        alignment_after = S.region_overlap(svd1.v, eig) if eig is not None else None
        block = block_index(name)
        d_out, d_in = w0.shape
        return LayerAnalysis(
            name=name,
            kind=name.rsplit(".", 1)[-1],
            block=int(block) if block.isdigit() else None,
            d_out=d_out,
            d_in=d_in,
            rank=size.rank,
            relative_rank=size.relative_rank,
            frobenius=size.frobenius,
            top_singular=size.top_singular,
            ceiling=layer_ceiling(method, settings, name, d_out, d_in),
            shift=shift.regions,
            spectrum_before=shift.before.tolist(),
            spectrum_after=shift.after.tolist(),
            intruders=S.intruder_dimensions(base.intruder_basis, self._intruder_vectors(svd1)),
            alignment_before=base.alignment.tolist() if base.alignment is not None else None,
            alignment_after=alignment_after.tolist() if alignment_after is not None else None,
            block_energy=base.block_energy.get(num_blocks),
            random_shift=null.regions,
        )

    def analyse_model(self, model: nn.Module, label: str = "adapter", path: str = "") -> AdapterAnalysis:
        """Every adapted dense layer of a PEFT model for its active adapter."""
        adapter_name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapters[0]
        config = model.peft_config[adapter_name]
        method = method_of(config)
        settings = registry_settings(method, config)
        num_blocks = int(getattr(config, "num_blocks", DEFAULT_NUM_BLOCKS))
        result = AdapterAnalysis(label, path, method, _plain_settings(config), num_blocks=num_blocks)
        layers = adapted_layers(model)
        if not layers:
            result.not_analysable = "the model has no adapted Linear/Conv1D layers"
            return result
        if not all(getattr(layer, "mergeable", True) for layer in layers.values()):
            result.not_analysable = f"{method} cannot be merged (its update depends on the input): it has no ΔW"
            return result
        for name, layer in tqdm(
            layers.items(), desc=f"analyse {label}", unit="layer", disable=not progress_enabled(self.progress)
        ):
            w0, w1 = merged_update(layer, adapter_name)
            result.layers.append(self.analyse_layer(name, w0, w1, method, settings, num_blocks))
        return result


def _plain_settings(config: Any) -> dict[str, Any]:
    keep = ("r", "lora_alpha", "num_blocks", "branch_ranks", "permutation", "use_dora", "mora_type", "target_modules")
    data = config.to_dict()
    out = {k: data[k] for k in keep if data.get(k) is not None}
    if isinstance(out.get("target_modules"), (set, frozenset)):
        out["target_modules"] = sorted(out["target_modules"])
    out["peft_type"] = peft_type_name(config)
    return out


# ------------------------------------------------------------------------------------------------- loading -------
def load_adapter(base: nn.Module, adapter_dir: str | os.PathLike[str]) -> nn.Module:
    """The adapter on a copy of ``base`` (the base itself is left untouched), in eval mode
    (:func:`smoa.methods.load_adapter`)."""
    from smoa.methods import load_adapter as load_checked

    return load_checked(copy.deepcopy(base), adapter_dir)


def analyse_adapters(
    base: nn.Module,
    adapter_dirs: Sequence[str | os.PathLike[str]],
    calibration: Sequence[Tensor] | None = None,
    labels: Sequence[str] | None = None,
    centre: bool = False,
    progress: bool = True,
) -> list[AdapterAnalysis]:
    """Load each adapter onto (a copy of) ``base`` and analyse it; calibration batches enable the alignment study.

    Covariances are collected on the base model (adapters disabled) for the adapted layers of every adapter.
    """
    labels = list(labels) if labels is not None else [Path(d).name for d in adapter_dirs]
    analyzer = SpectralAnalyzer(progress=progress)
    results = []
    for label, adapter_dir in zip(labels, adapter_dirs, strict=True):
        model = load_adapter(base, adapter_dir)
        layers = adapted_layers(model)
        missing = {n: layer for n, layer in layers.items() if n not in analyzer.covariances}
        if calibration is not None and missing:
            with model.disable_adapter():
                analyzer.covariances.update(activation_covariances(model, missing, calibration, centre, progress))
        results.append(analyzer.analyse_model(model, label=label, path=str(adapter_dir)))
        del model
    return results
