"""One battery over every weight adapter: SMoA, the baselines MeLoRA, MoRA (types 6 and 1) and SSMLoRA, and PEFT's
LoRA, DoRA and HiRA as controls, each on tiny bases (an MLP, a Llama, a GPT-2 with Conv1D layers).

Every row is a method on a base with its settings; every check runs on every row:

- identity at init: the adapted model's output equals the base's exactly (every method here starts as identity);
- not a no-op: with random init (B factors too) the output differs, so the checks below see a real update;
- save / load: the reloaded adapter gives bit-identical outputs, whatever the RNG state;
- merge / unmerge (mergeable methods; skipped with the reason otherwise): merging keeps the output, is idempotent,
  unmerging restores the base weights (bit for bit for SMoA, whose unmerge puts the kept ``W0`` back; within float
  error for methods that subtract ``ΔW``), ``merge_and_unload`` leaves no adapter layer, safe merge works;
- only the adapter trains: two optimiser steps change exactly the trainable parameters, all of the method's prefix;
- disable_adapter: the base output exactly, also while merged (the layer unmerges);
- two adapters: a second adapter changes the output and switching back restores the first exactly;
- the trainable count equals the registry's analytic count (:mod:`smoa.methods`) for the row's settings.

Rows take their config from the registry (``MethodSpec.make_config``), so the battery also checks that the
registry's settings build working adapters; a row that the registry cannot express gives its config directly.
Method-specific checks (formulas against references, init distributions, errors) stay in the per-method files.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from peft import PeftModel
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PretrainedConfig

from smoa.methods import LayerShape, ModelSpec, get_method, model_spec_from_module
from tests.baselines.conftest import adapted, inputs_for, melora_uneven, reset, run, tiny_gpt2, tiny_llama, tiny_mlp

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_fc"]
MLP_TARGETS = ["lin0", "lin1"]

#: the prefix of each method's adapter parameters (DoRA's magnitude vector is ``lora_magnitude_vector``)
PREFIX = {"smoa": "smoa_", "lora": "lora_", "dora": "lora_", "hira": "hira_", "melora": "melora_", "mora": "mora_"}
PREFIX |= {"mora1": "mora_", "ssmlora": "ssmlora_"}


@dataclass(frozen=True)
class Row:
    """A method (its registry name) on a tiny base, with registry ``settings`` or, where the registry cannot express
    the case, a ``config`` factory; ``exact_unmerge``: unmerging restores the base weights bit for bit."""

    id: str
    method: str
    make_base: Callable[..., nn.Module]
    targets: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    config: Callable[[], PeftConfig] | None = None
    exact_unmerge: bool = False
    count_note: str = ""

    @property
    def registry_settings(self) -> dict[str, Any]:
        """The method's paper setting with the row's ``settings`` over it, as the registry plans it."""
        return {**get_method(self.method).paper, **self.settings}

    def peft_config(self) -> PeftConfig:
        """The row's config at the method's own init (identity for every method here)."""
        if self.config is not None:
            return self.config()
        with torch.random.fork_rng(devices=[]):  # building the base reseeds; the caller's RNG stays as it was
            spec = spec_of(self.make_base(0))
        made = get_method(self.method).make_config(self.registry_settings, list(self.targets), spec)
        if self.make_base is tiny_mlp:
            made.task_type = None  # a bare module, not a causal LM
        return made

    def random_config(self) -> PeftConfig:
        """The row's config with every factor initialised randomly, so the update is not zero."""
        made = copy.deepcopy(self.peft_config())
        setattr(made, "init_weights" if self.method == "hira" else "init_lora_weights", False)
        return made


def spec_of(model: nn.Module) -> ModelSpec:
    """The registry's view of a base: from its transformers config, or (the bare MLP) from its Linear layers."""
    if hasattr(model, "config"):
        return model_spec_from_module(model)
    layers = tuple(
        LayerShape(name, name.rsplit(".", 1)[-1], "Linear", module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    )
    return ModelSpec(type(model).__name__, PretrainedConfig(), sum(p.numel() for p in model.parameters()), layers)


MELORA_GPT2 = {"num_minis": 4, "mini_rank": 1, "lora_alpha": 4.0, "lora_dropout": 0.0}
SMOA = {"r": 4, "num_blocks": 2, "lora_alpha": 8, "lora_dropout": 0.0}
SSMLORA = {"r": 4, "lora_alpha": 2.0, "lora_dropout": 0.0}
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
ROWS = [
    Row("smoa-mlp", "smoa", tiny_mlp, MLP_TARGETS, SMOA, exact_unmerge=True),
    # dropout on: the training check runs the blockwise kernel with a dropped-out branch input
    Row("smoa-llama", "smoa", tiny_llama, LLAMA_TARGETS, {**SMOA, "lora_dropout": 0.1}, exact_unmerge=True),
    Row("smoa-gpt2-conv1d", "smoa", tiny_gpt2, GPT2_TARGETS, {**SMOA, "r": 6, "num_blocks": 3}, exact_unmerge=True),
    Row(
        "melora-mlp",
        "melora",
        tiny_mlp,
        MLP_TARGETS,
        config=melora_uneven,
        count_note="minis of different ranks, which the registry's MeLoRA (n equal minis) cannot express; "
        "test_melora counts them",
    ),
    Row(
        "melora-llama",
        "melora",
        tiny_llama,
        LLAMA_TARGETS,
        {"num_minis": 4, "mini_rank": 2, "lora_alpha": 8.0, "lora_dropout": 0.0},
    ),
    Row("melora-gpt2-conv1d", "melora", tiny_gpt2, GPT2_TARGETS, MELORA_GPT2),
    Row("mora-mlp-type6", "mora", tiny_mlp, MLP_TARGETS, {"r": 2, "mora_type": 6, "lora_dropout": 0.0}),
    Row("mora-mlp-type1", "mora1", tiny_mlp, MLP_TARGETS, {"r": 2, "mora_type": 1, "lora_dropout": 0.0}),
    Row("mora-llama-type6", "mora", tiny_llama, LLAMA_TARGETS, {"r": 4, "mora_type": 6, "lora_dropout": 0.0}),
    Row("mora-llama-type1", "mora1", tiny_llama, LLAMA_TARGETS, {"r": 4, "mora_type": 1, "lora_dropout": 0.0}),
    Row("mora-gpt2-conv1d-type6", "mora", tiny_gpt2, GPT2_TARGETS, {"r": 2, "mora_type": 6, "lora_dropout": 0.0}),
    Row("ssmlora-mlp", "ssmlora", tiny_mlp, MLP_TARGETS, SSMLORA),
    Row("ssmlora-llama", "ssmlora", tiny_llama, ["q_proj", "v_proj", "down_proj"], SSMLORA),
    Row("ssmlora-gpt2-conv1d", "ssmlora", tiny_gpt2, ["c_attn"], SSMLORA),
    Row("lora-mlp", "lora", tiny_mlp, MLP_TARGETS, LORA),
    Row("lora-llama", "lora", tiny_llama, LLAMA_TARGETS, LORA),
    Row("dora-llama", "dora", tiny_llama, LLAMA_TARGETS, {**LORA, "use_dora": True}),
    Row("hira-llama", "hira", tiny_llama, LLAMA_TARGETS, {"r": 4, "hira_dropout": 0.0}),
]
battery = pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])


def assert_same(got: torch.Tensor, want: torch.Tensor, exact: bool, atol: float) -> None:
    torch.testing.assert_close(got, want, atol=0 if exact else atol, rtol=0)


def skip_unless_mergeable(row: Row) -> None:
    if not get_method(row.method).mergeable:
        pytest.skip(
            f"{row.method} is not mergeable: its output is not a linear function of the input (a recurrent state "
            "and a nonlinearity), so there is no ΔW to merge; its merge error is checked in its own tests"
        )


# ----------------------------------------------------------------------------------------------------- checks --
@battery
def test_identity_at_init(row: Row) -> None:
    x = inputs_for(row.make_base)
    base = run(row.make_base(0), x)
    model = adapted(row.make_base, row.peft_config())
    torch.testing.assert_close(run(model, x), base, atol=0, rtol=0)


@battery
def test_random_init_is_not_a_noop(row: Row) -> None:
    x = inputs_for(row.make_base)
    assert not torch.allclose(run(adapted(row.make_base, row.random_config()), x), run(row.make_base(0), x), atol=1e-4)


@battery
def test_save_load_roundtrip_is_bit_identical(row: Row, tmp_path) -> None:
    x = inputs_for(row.make_base)
    model = adapted(row.make_base, row.random_config())
    reset(model)
    expected = run(model, x)
    model.save_pretrained(tmp_path)
    torch.manual_seed(9999)  # a different RNG state: any re-initialisation would show
    loaded = PeftModel.from_pretrained(row.make_base(0), tmp_path).eval()
    reset(loaded)
    torch.testing.assert_close(run(loaded, x), expected, atol=0, rtol=0)
    saved = {n: p for n, p in model.named_parameters() if PREFIX[row.method] in n}
    got = {n: p for n, p in loaded.named_parameters() if PREFIX[row.method] in n}
    assert saved and got.keys() == saved.keys() and all(torch.equal(got[n], saved[n]) for n in saved)


@battery
def test_merge_unmerge_and_unload(row: Row) -> None:
    skip_unless_mergeable(row)
    x = inputs_for(row.make_base)
    model = adapted(row.make_base, row.random_config())
    unmerged = run(model, x)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    assert weights
    model.merge_adapter()
    merged = run(model, x)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=0)
    model.merge_adapter()  # idempotent: already merged adapters are skipped
    torch.testing.assert_close(run(model, x), merged, atol=0, rtol=0)
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in weights:
            assert_same(param, weights[name], row.exact_unmerge, atol=1e-6)
    assert_same(run(model, x), unmerged, row.exact_unmerge, atol=1e-6)
    unloaded = model.merge_and_unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in unloaded.modules())
    torch.testing.assert_close(run(unloaded, x), unmerged, atol=1e-4, rtol=0)


@battery
def test_safe_merge(row: Row) -> None:
    skip_unless_mergeable(row)
    model = adapted(row.make_base, row.random_config())
    x = inputs_for(row.make_base)
    unmerged = run(model, x)
    model.base_model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(run(model, x), unmerged, atol=1e-4, rtol=0)


@battery
def test_only_the_adapter_trains(row: Row) -> None:
    model = adapted(row.make_base, row.random_config())
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(PREFIX[row.method] in n for n in trainable), sorted(trainable)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = inputs_for(row.make_base)
    for _ in range(2):  # factors that start at zero move from the second step on
        out = model(x)
        loss = (out.logits if hasattr(out, "logits") else out).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in trainable), (name, changed)


@battery
def test_disable_adapter_gives_the_base_output(row: Row) -> None:
    x = inputs_for(row.make_base)
    base = run(row.make_base(0), x)
    model = adapted(row.make_base, row.random_config())
    with model.disable_adapter():
        torch.testing.assert_close(run(model, x), base, atol=0, rtol=0)
    assert not torch.allclose(run(model, x), base, atol=1e-4)
    if get_method(row.method).mergeable:
        model.merge_adapter()
        with model.disable_adapter():  # the layers unmerge first
            assert_same(run(model, x), base, row.exact_unmerge, atol=1e-5)


@battery
def test_two_adapters(row: Row) -> None:
    x = inputs_for(row.make_base)
    model = adapted(row.make_base, row.random_config())
    reset(model)
    first = run(model, x)
    torch.manual_seed(1)
    model.add_adapter("other", row.random_config())
    model.set_adapter("other")
    reset(model)
    second = run(model, x)
    assert not torch.allclose(first, second, atol=1e-4)
    model.set_adapter("default")
    reset(model)
    torch.testing.assert_close(run(model, x), first, atol=0, rtol=0)


@battery
def test_trainable_count_equals_the_registry(row: Row) -> None:
    if row.count_note:
        pytest.skip(row.count_note)
    base = row.make_base(0)
    spec = spec_of(base)
    method = get_method(row.method)
    want = method.trainable_params(spec, spec.select(row.targets), row.registry_settings)
    model = adapted(row.make_base, row.peft_config())
    assert model.get_nb_trainable_parameters() == (want, spec.base_params + want)


def test_every_weight_adapter_of_the_registry_has_a_row() -> None:
    from smoa.methods import method_names

    adapters = {name for name in method_names() if get_method(name).family == "adapter"}
    assert {row.method for row in ROWS} == adapters
    assert {row.method for row in ROWS if not row.count_note} == adapters
