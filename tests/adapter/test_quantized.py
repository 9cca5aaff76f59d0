"""SMoA on bitsandbytes 4-bit (nf4, fp4, double quantisation) and 8-bit bases, on CPU (bitsandbytes' CPU backend).

Reference: the same tiny Llama in float32 holding the dequantised weights, computed here independently of smoa
(4-bit: ``bitsandbytes.functional.dequantize_4bit``; 8-bit: ``codes · SCB / 127``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

import smoa
from smoa.adapter import functional as F
from smoa.dense import UnsupportedLayerError
from tests.adapter.conftest import LLAMA_TARGETS, make_mlp
from tests.tiny import build_tiny_llama

bnb = pytest.importorskip(
    "bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[quantized]', done by scripts/setup.sh)"
)
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from smoa.adapter import bnb as smoa_bnb  # noqa: E402

FOUR_BIT = {
    "nf4": dict(bnb_4bit_quant_type="nf4"),
    "fp4": dict(bnb_4bit_quant_type="fp4"),
    "nf4-double": dict(bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A float32 tiny Llama on disk; hidden 64 / MLP 128, so every row starts a 4-bit quantisation block."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(vocab_size=64, hidden_size=64, intermediate_size=128, max_position_embeddings=64).save_pretrained(
        path
    )
    return path


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))


def load_4bit(base_dir, kind: str = "nf4", compute_dtype: torch.dtype = torch.float32, dtype=torch.float32):
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype, **FOUR_BIT[kind])
    return AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=config, dtype=dtype)


def load_8bit(base_dir):
    config = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=config, dtype=torch.float32)


def reference_dequantized(module: nn.Module) -> torch.Tensor:
    """The float weight a bitsandbytes layer stands for, computed without smoa."""
    weight = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    scales = weight.SCB if weight.SCB is not None else module.state.SCB
    return weight.data * scales.float().unsqueeze(1) * (1 / 127)  # LLM.int8: times the (float32) reciprocal


def float_twin(base_dir, quantized: nn.Module) -> nn.Module:
    """The float model with every quantised layer's weight replaced by its dequantised value."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    for name, module in quantized.named_modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            model.get_submodule(name.replace(".base_layer", "")).weight.data.copy_(reference_dequantized(module))
    return model


def config(**overrides) -> smoa.SMoAConfig:
    values = dict(r=8, num_blocks=2, target_modules=LLAMA_TARGETS, init_lora_weights=False)
    values.update(overrides)
    return smoa.SMoAConfig(**values)


def copy_factors(source: nn.Module, target: nn.Module) -> None:
    for a, b in zip(smoa.smoa_layers(source).values(), smoa.smoa_layers(target).values(), strict=True):
        for key in a.smoa_A:
            for p, q in zip([*a.smoa_A[key], *a.smoa_B[key]], [*b.smoa_A[key], *b.smoa_B[key]], strict=True):
                q.data.copy_(p.data)


def factor_grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for name, p in model.named_parameters() if "smoa_" in name]


def assert_close_when_merged_and_exact_when_unmerged(model, tokens, unmerged, base, codes, w0) -> None:
    """The merged model stays near the unmerged one; unmerging restores the quantised codes and outputs exactly."""
    with torch.no_grad():
        merged = model(tokens).logits
    assert (merged - unmerged).abs().max() < 0.1 * unmerged.abs().max()
    model.unmerge_adapter()
    assert torch.equal(base.weight.data, codes) and torch.equal(reference_dequantized(base), w0)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, unmerged)


# ------------------------------------------------------------------------------------------------------ 4-bit
@pytest.mark.parametrize("kind", list(FOUR_BIT))
def test_4bit_orders_outputs_and_gradients_equal_a_float_model_of_the_dequantised_weights(base_dir, tokens, kind):
    quantized = get_peft_model(load_4bit(base_dir, kind), config())
    reference = get_peft_model(float_twin(base_dir, quantized.base_model.model), config())
    copy_factors(quantized, reference)
    layers_q, layers_f = smoa.smoa_layers(quantized), smoa.smoa_layers(reference)
    assert {type(layer) for layer in layers_q.values()} == {smoa_bnb.Linear4bit}
    for (name, q), (_, f) in zip(layers_q.items(), layers_f.items(), strict=True):
        assert torch.equal(q.smoa_row_order["default"], f.smoa_row_order["default"]), name
        assert torch.equal(q.smoa_col_order["default"], f.smoa_col_order["default"]), name
        assert torch.equal(q.smoa_fingerprint["default"], f.smoa_fingerprint["default"]), name
    quantized.train()
    reference.train()
    out_q, out_f = quantized(tokens).logits, reference(tokens).logits
    torch.testing.assert_close(out_q, out_f, rtol=1e-5, atol=1e-5)
    out_q.square().mean().backward()
    out_f.square().mean().backward()
    for g_q, g_f in zip(factor_grads(quantized), factor_grads(reference), strict=True):
        torch.testing.assert_close(g_q, g_f, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", list(FOUR_BIT))
def test_4bit_anchors_are_the_dequantised_blocks_bit_for_bit(kind):
    torch.manual_seed(0)
    for d_in in (128, 48):  # rows aligned with the 64-entry quantisation blocks, and not (full dequantisation)
        base = nn.Sequential(nn.Linear(d_in, 40))
        quant = dict(compress_statistics=kind == "nf4-double", quant_type=FOUR_BIT[kind]["bnb_4bit_quant_type"])
        layer4 = bnb.nn.Linear4bit(d_in, 40, compute_dtype=torch.float32, **quant)
        layer4.weight = bnb.nn.Params4bit(base[0].weight.data.clone(), requires_grad=False, **quant)
        layer4.bias = base[0].bias
        base[0] = layer4.to("cpu")
        model = get_peft_model(base, smoa.SMoAConfig(r=4, num_blocks=3, target_modules=["0"]))
        layer = next(iter(smoa.smoa_layers(model).values()))
        w0 = reference_dequantized(layer.get_base_layer())
        assert layer.effective_weight().shape == (40, d_in)  # never the packed (n/2, 1) storage
        row_order, col_order = layer.orders("default")
        blocks = list(zip(F.block_indices(row_order, 3), F.block_indices(col_order, 3), strict=True))
        anchors = layer.anchor_source().gather(blocks, torch.float32)
        for (rows, cols), anchor in zip(blocks, anchors, strict=True):
            assert torch.equal(anchor, F.block_anchor(w0, rows, cols))


def test_4bit_branch_holds_and_saves_no_full_precision_weight(base_dir):
    model = get_peft_model(load_4bit(base_dir), config())
    layer = smoa.smoa_layers(model)["base_model.model.model.layers.0.mlp.down_proj"]
    layer.train()
    d = layer.out_features * layer.in_features
    x = torch.randn(3, layer.in_features, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.smoa_A["default"])
    own = [t for n, t in layer.named_buffers() if not n.startswith("base_layer")] + list(layer.smoa_A["default"])
    assert all(t.numel() < d // 2 for t in own)
    assert not any(t.is_floating_point() and t.numel() >= d // 2 for t in saved), [tuple(t.shape) for t in saved]


def test_4bit_compute_dtype_is_respected(base_dir, tokens):
    quantized = load_4bit(base_dir, compute_dtype=torch.bfloat16, dtype=torch.bfloat16)
    model = get_peft_model(quantized, config())
    layer = smoa.smoa_layers(model)["base_model.model.model.layers.0.self_attn.q_proj"]
    seen = []
    layer.get_base_layer().register_forward_pre_hook(lambda m, args: seen.append(m.compute_dtype))
    with torch.no_grad():
        logits = model(tokens).logits
    assert seen == [torch.bfloat16] and logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert layer.smoa_A["default"][0].dtype == torch.float32  # the branch runs in the factors' float32


def test_4bit_eval_inference_does_not_change_w0(base_dir, tokens):
    """bitsandbytes repacks 4-bit weights for AVX512-BF16 CPUs at the first no-grad eval forward, rounding the block
    scales to bf16; SMoA keeps its layers in the standard layout, so W0 (and the fingerprint) stay put."""
    model = get_peft_model(load_4bit(base_dir), config()).eval()
    layer = smoa.smoa_layers(model)["base_model.model.model.layers.0.self_attn.q_proj"]
    before = layer.effective_weight().clone()
    with torch.no_grad():
        first = model(tokens).logits
        second = model(tokens).logits
    assert not getattr(layer.get_base_layer().weight.quant_state, "packing_format_for_cpu", False)
    assert torch.equal(layer.effective_weight(), before) and torch.equal(first, second)


def test_4bit_save_and_load_are_bit_identical(base_dir, tokens, tmp_path):
    model = get_peft_model(load_4bit(base_dir, "nf4-double"), config()).eval()
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(load_4bit(base_dir, "nf4-double"), str(tmp_path / "adapter")).eval()
    saved = {k: v for k, v in model.state_dict().items() if "smoa_" in k}
    again = {k: v for k, v in loaded.state_dict().items() if "smoa_" in k}
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_4bit_merge_requantises_within_the_rounding_bound_and_unmerge_is_exact(base_dir, tokens, kind):
    model = get_peft_model(load_4bit(base_dir, kind), config()).eval()
    layer = smoa.smoa_layers(model)["base_model.model.model.layers.1.mlp.up_proj"]
    base = layer.get_base_layer()
    codes, w0 = base.weight.data.clone(), reference_dequantized(base)
    exact = w0 + layer.get_delta_weight("default", dtype=torch.float32)
    with torch.no_grad():
        unmerged = model(tokens).logits
    with pytest.warns(UserWarning, match=r"4-bit module 'model.layers.1.mlp.up_proj' requantises its weight"):
        model.merge_adapter()
    merged_w = reference_dequantized(base)
    # the merged weight is exactly bitsandbytes' requantisation of W0 + ΔW ...
    codes_ref, state_ref = bnb.functional.quantize_4bit(exact, quant_type=kind, compress_statistics=False)
    assert torch.equal(merged_w, bnb.functional.dequantize_4bit(codes_ref, state_ref))
    # ... so within one rounding step of W0 + ΔW: half the widest gap of the code book, times each block's absmax
    book = torch.sort(bnb.functional.get_4bit_type(kind, device="cpu")).values
    half_gap = float((book[1:] - book[:-1]).max()) / 2
    absmax = exact.reshape(-1, 64).abs().amax(dim=1, keepdim=True)
    assert bool(((merged_w - exact).reshape(-1, 64).abs() <= absmax * half_gap * (1 + 1e-6)).all())
    assert_close_when_merged_and_exact_when_unmerged(model, tokens, unmerged, base, codes, w0)


def test_4bit_sequential_merge_equals_batch_merge_exactly(base_dir):
    def two_adapters():
        model = get_peft_model(load_4bit(base_dir), config(), adapter_name="a")
        torch.manual_seed(1)
        model.add_adapter("b", config())
        return model

    one, both = two_adapters(), two_adapters()
    copy_factors(one, both)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model in (one, both):
            for layer in smoa.smoa_layers(model).values():
                if model is one:
                    layer.merge(adapter_names=["a"])
                    layer.merge(adapter_names=["b"])
                else:
                    layer.merge(adapter_names=["a", "b"])
    for a, b in zip(smoa.smoa_layers(one).values(), smoa.smoa_layers(both).values(), strict=True):
        assert torch.equal(a.get_base_layer().weight.data, b.get_base_layer().weight.data)


def test_4bit_merge_and_unload_gives_plain_bnb_layers(base_dir, tokens):
    model = get_peft_model(load_4bit(base_dir), config()).eval()
    with torch.no_grad():
        before = model(tokens).logits
    with pytest.warns(UserWarning, match="requantises"):
        plain = model.merge_and_unload()
    assert not smoa.smoa_layers(plain)
    assert isinstance(plain.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    with torch.no_grad():
        after = plain(tokens).logits
    assert (after - before).abs().max() < 0.1 * before.abs().max()


def test_merge_into_full_precision_adds_the_update_trained_on_the_dequantised_base(base_dir, tokens):
    quantized = get_peft_model(load_4bit(base_dir), config())
    twin = get_peft_model(float_twin(base_dir, quantized.base_model.model), config())
    copy_factors(quantized, twin)
    full = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    original = {name: m.weight.detach().clone() for name, m in full.named_modules() if isinstance(m, nn.Linear)}
    smoa.adapter.merge_into_full_precision(quantized, full)
    for layer in smoa.smoa_layers(twin).values():
        want = original[layer.module_name] + layer.get_delta_weight("default", dtype=torch.float32)
        torch.testing.assert_close(full.get_submodule(layer.module_name).weight, want, rtol=0, atol=1e-7)
    assert torch.equal(full.lm_head.weight, original["lm_head"]) and not smoa.smoa_layers(full)


# ------------------------------------------------------------------------------------------------------ 8-bit
def branch_and_grads(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``layer(x) − base(x)`` (the SMoA branch) and the factor gradients of ``Σ g ⊙ layer(x)``."""
    layer.zero_grad()
    out = layer(x)
    (out * g).sum().backward()
    with torch.no_grad():
        branch = out - layer.get_base_layer()(x)
    return branch.detach(), [p.grad.clone() for p in [*layer.smoa_A["default"], *layer.smoa_B["default"]]]


def test_8bit_orders_branch_and_gradients_equal_a_float_model_of_the_dequantised_weights(base_dir):
    quantized = get_peft_model(load_8bit(base_dir), config())
    reference = get_peft_model(float_twin(base_dir, quantized.base_model.model), config())
    copy_factors(quantized, reference)
    generator = torch.Generator().manual_seed(0)
    for (name, q), (_, f) in zip(smoa.smoa_layers(quantized).items(), smoa.smoa_layers(reference).items(), strict=True):
        assert isinstance(q, smoa_bnb.Linear8bitLt)
        assert torch.equal(q.smoa_row_order["default"], f.smoa_row_order["default"]), name
        assert torch.equal(q.smoa_col_order["default"], f.smoa_col_order["default"]), name
        w0 = reference_dequantized(q.get_base_layer())
        assert torch.equal(q.effective_weight(), w0) and w0.abs().max() < 1  # the weight, not the int8 codes
        x = torch.randn(5, q.in_features, generator=generator)
        g = torch.randn(5, q.out_features, generator=generator)
        branch_q, grads_q = branch_and_grads(q.train(), x, g)
        branch_f, grads_f = branch_and_grads(f.train(), x, g)
        torch.testing.assert_close(branch_q, branch_f, rtol=1e-5, atol=1e-6)
        for g_q, g_f in zip(grads_q, grads_f, strict=True):
            torch.testing.assert_close(g_q, g_f, rtol=1e-5, atol=1e-7)


def test_8bit_save_load_bit_identical_merge_bounded_and_unmerge_exact(base_dir, tokens, tmp_path):
    model = get_peft_model(load_8bit(base_dir), config()).eval()
    with torch.no_grad():
        unmerged = model(tokens).logits  # after a forward bitsandbytes keeps the scales in the layer state
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(load_8bit(base_dir), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, unmerged)

    layer = smoa.smoa_layers(model)["base_model.model.model.layers.0.self_attn.v_proj"]
    base = layer.get_base_layer()
    codes, w0 = base.weight.data.clone(), reference_dequantized(base)
    exact = w0 + layer.get_delta_weight("default", dtype=torch.float32)
    with pytest.warns(UserWarning, match=r"8-bit module 'model.layers.0.self_attn.v_proj' requantises"):
        model.merge_adapter()
    merged_w = reference_dequantized(base)
    # row-wise absmax int8 (from float16): within half a code step per row, plus float16 rounding
    step = exact.abs().amax(dim=1, keepdim=True) / 127
    assert bool(((merged_w - exact).abs() <= step / 2 + exact.abs() * 2**-10 + 1e-7).all())
    assert_close_when_merged_and_exact_when_unmerged(model, tokens, unmerged, base, codes, w0)


BASE_KINDS = {
    "float": lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
    **{kind: (lambda path, kind=kind: load_4bit(path, kind)) for kind in FOUR_BIT},
    "8bit": load_8bit,
}


def train_steps(base: nn.Module, tokens: torch.Tensor, evaluate_between: bool) -> list[torch.Tensor]:
    """Two SGD steps on the q/v factors (k, o and the MLP stay plain base layers), with or without a Trainer-style
    evaluation (eval mode, ``torch.no_grad()``) between them; returns the factors after (seeded: the same start)."""
    for module in base.modules():  # as on a CPU with AVX512-BF16, where bitsandbytes repacks at a no-grad forward
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = True
    torch.manual_seed(0)
    model = get_peft_model(base, config(target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(2):
        model.train()
        model(tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if evaluate_between and step == 0:
            model.eval()
            with torch.no_grad():
                model(tokens, labels=tokens)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            assert not getattr(module.weight.quant_state, "packing_format_for_cpu", False)
    return [p.detach().clone() for name, p in model.named_parameters() if "smoa_" in name]


@pytest.mark.parametrize("kind", list(BASE_KINDS))
def test_training_across_an_evaluation_equals_training_without_one(base_dir, tokens, kind):
    """An evaluation under ``torch.no_grad()`` between two steps changes nothing the next step computes, on every
    base kind: bitsandbytes' repacked 4-bit layout (no backward) is kept off every ``Linear4bit``, wrapped or not."""
    across = train_steps(BASE_KINDS[kind](base_dir), tokens, evaluate_between=True)
    straight = train_steps(BASE_KINDS[kind](base_dir), tokens, evaluate_between=False)
    assert all(torch.equal(a, b) for a, b in zip(across, straight, strict=True))
    torch.manual_seed(0)
    initial = get_peft_model(BASE_KINDS[kind](base_dir), config(target_modules=["q_proj", "v_proj"]))
    before = [p for name, p in initial.named_parameters() if "smoa_" in name]
    assert all(not torch.equal(a, b) for a, b in zip(before, straight, strict=True))  # every factor trained


def test_kbit_training_changes_only_the_factors(base_dir, tokens):
    from peft import prepare_model_for_kbit_training

    checkpointing = {"use_reentrant": False}
    prepared = prepare_model_for_kbit_training(load_4bit(base_dir), gradient_checkpointing_kwargs=checkpointing)
    model = get_peft_model(prepared, config(init_lora_weights=True))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "smoa_" not in k}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    model.train()
    for _ in range(3):
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


# --------------------------------------------------------------------------------------- other quantised weights
class QuantLinear(nn.Module):
    """Stands for GPTQ / AWQ / HQQ layers: packed integer codes and scales, no float weight."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self.register_buffer("qweight", torch.zeros(d_in // 8, d_out, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(1, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


class AffineQuantizedTensor(torch.Tensor):
    """Stands for torchao's quantised tensor subclasses on a plain nn.Linear."""


def gptq_like():
    model = make_mlp()
    model.lin0 = QuantLinear(20, 24)
    return model, r"'lin0' of type .*QuantLinear"


def torchao_like():
    model = make_mlp()
    model.lin0.weight = nn.Parameter(AffineQuantizedTensor(torch.zeros(24, 20)), requires_grad=False)
    return model, r"'lin0' \(torch.nn.modules.linear.Linear\) stores a AffineQuantizedTensor"


def int8_without_bnb():
    model = make_mlp()
    model.lin0.weight = nn.Parameter(torch.zeros(24, 20, dtype=torch.int8), requires_grad=False)
    return model, r"'lin0' \(torch.nn.modules.linear.Linear\) stores a Parameter of dtype torch.int8"


def bnb_not_quantised_yet():
    model = make_mlp()
    model.lin0 = bnb.nn.Linear4bit(20, 24, quant_type="nf4")  # never moved to a device: still float inside
    return model, r"'lin0' \(bitsandbytes.nn.Linear4bit\) holds a weight that is not quantised yet"


@pytest.mark.parametrize("build", [gptq_like, torchao_like, int8_without_bnb, bnb_not_quantised_yet])
def test_other_quantised_weights_are_refused_in_one_line_before_any_svd(build, monkeypatch):
    model, message = build()
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: pytest.fail("SVD ran on a quantised weight"))
    with pytest.raises(UnsupportedLayerError, match=message) as info:
        get_peft_model(model, smoa.SMoAConfig(r=4, num_blocks=2, target_modules=["lin0"]))
    assert "\n" not in str(info.value)
