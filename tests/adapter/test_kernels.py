"""The fused and blockwise kernels against the plain reference: outputs and gradients, torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from transformers.pytorch_utils import Conv1D

import smoa
from smoa.adapter import autograd
from smoa.adapter import functional as F
from smoa.adapter.autograd import blockwise_delta_output, fused_linear
from smoa.adapter.kernel_choice import KERNELS, output_is_private
from tests.adapter.conftest import LLAMA_TARGETS, make_llama
from tests.adapter.test_functional import random_factors


def set_kernel(model: torch.nn.Module, kernel: str) -> None:
    for layer in smoa.smoa_layers(model).values():
        layer.kernel = kernel


def layer_run(layer, x, upstream, seed=0):
    """Output and gradients (input, factors, bias) of one SMoA layer for a given upstream gradient."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # same dropout mask for every kernel
    out = layer(x)
    out.backward(upstream)
    grads = [p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad and p.grad is not None]
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize(
    "d_out,d_in,r,k,branch_ranks",
    [(48, 48, 8, 2, None), (40, 64, 6, 3, None), (64, 24, 5, 2, [4, 1]), (33, 47, 8, 4, None)],
)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_kernels_match_reference(conv1d, d_out, d_in, r, k, branch_ranks, dropout):
    torch.manual_seed(0)
    base = Conv1D(d_out, d_in) if conv1d else torch.nn.Linear(d_in, d_out)
    torch.nn.init.normal_(base.weight)
    torch.nn.init.normal_(base.bias)
    model = get_peft_model(
        torch.nn.Sequential(base),
        smoa.SMoAConfig(
            r=r,
            num_blocks=k,
            branch_ranks=branch_ranks,
            lora_alpha=16,
            lora_dropout=dropout,
            target_modules=["0"],
            init_lora_weights=False,
            bias="lora_only",
        ),
    )
    layer = next(iter(smoa.smoa_layers(model).values()))
    assert layer.fan_in_fan_out == conv1d
    layer.train()
    x = torch.randn(3, 40, d_in)
    upstream = torch.randn(3, 40, d_out)
    layer.kernel = "reference"
    want = layer_run(layer, x, upstream)
    for kernel in ("fused", "blockwise", "auto"):
        layer.kernel = kernel
        got = layer_run(layer, x, upstream)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5, msg=kernel)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5, msg=kernel)
        assert len(got[2]) == len(want[2]) == 2 * k + 1  # factors and the bias
        for g, w in zip(got[2], want[2], strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=kernel)


def test_fused_path_is_taken_only_when_exact():
    model = get_peft_model(make_llama(), smoa.SMoAConfig(r=4, target_modules=LLAMA_TARGETS, lora_dropout=0.1))
    layer = next(iter(smoa.smoa_layers(model).values()))
    x = torch.randn(2, 64, layer.in_features)
    layer.train()
    assert not layer._fusable(x, ["default"], (), {})  # active dropout: the branch input differs from the base's
    layer.eval()
    assert layer._fusable(x, ["default"], (), {})
    layer.fuse_min_tokens = 8
    assert not layer._fusable(x[:, :2], ["default"], (), {})  # 4 tokens: too few for "auto" at 8
    layer.fuse_min_tokens = 1
    layer.kernel = "blockwise"
    assert not layer._fusable(x, ["default"], (), {})
    layer.kernel = "fused"
    layer.get_base_layer().to(torch.bfloat16)  # W0 + ΔW in bf16 would round small updates away
    assert not layer._fusable(x.bfloat16(), ["default"], (), {})
    layer.get_base_layer().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layer._fusable(x, ["default"], (), {})
    assert layer._fusable(x, ["default"], (), {})


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k != "reference"])
def test_model_loss_and_gradients_match_reference(kernel):
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    base = make_llama()
    config = smoa.SMoAConfig(r=4, num_blocks=2, target_modules=LLAMA_TARGETS, init_lora_weights=False)

    def run(kernel_name):
        torch.manual_seed(3)  # same random factors for every kernel
        model = get_peft_model(copy.deepcopy(base), config)
        set_kernel(model, kernel_name)
        model.train()
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    want_loss, want_grads = run("reference")
    loss, grads = run(kernel)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_torch_compile_matches_eager():
    tokens = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(2))
    model = get_peft_model(
        make_llama(), smoa.SMoAConfig(r=4, num_blocks=2, target_modules=LLAMA_TARGETS, init_lora_weights=False)
    )
    with torch.no_grad():
        eager = model(tokens).logits
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(tokens).logits, eager, rtol=1e-4, atol=1e-4)
    model.train()
    reference = copy.deepcopy(model)
    want = reference(tokens, labels=tokens).loss
    want.backward()
    compiled = torch.compile(model)
    loss = compiled(tokens, labels=tokens).loss
    loss.backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    want_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads.keys() == want_grads.keys() and len(grads) == 2 * 2 * len(smoa.smoa_layers(model))
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("kernel", ["blockwise", "fused"])
def test_kernels_compute_exactly_the_gradients_asked_for(kernel):
    """The factor gradients are matched to the forward's arguments by name: only the factors (and input) that
    require a gradient get one, and each equals the reference's."""
    g = torch.Generator().manual_seed(4)
    d_out, d_in, ranks = 12, 10, [2, 3]
    weight = torch.randn(d_out, d_in, generator=g)
    row_order, col_order = F.block_orders(weight)
    a, b = random_factors(d_out, d_in, ranks, g)
    x = torch.randn(5, d_in, generator=g)
    upstream = torch.randn(5, d_out, generator=g)
    trainable = {"a1", "b0"}  # one factor of each kind, in different blocks
    factors = {f"a{k}": t for k, t in enumerate(a)} | {f"b{k}": t for k, t in enumerate(b)}
    for name, t in factors.items():
        t.requires_grad_(name in trainable)
    ref = {name: t.detach().clone().requires_grad_(name in trainable) for name, t in factors.items()}
    ref_a, ref_b = [ref[f"a{k}"] for k in range(2)], [ref[f"b{k}"] for k in range(2)]
    (F.delta_output(x, weight, row_order, col_order, ref_a, ref_b, 0.5) * upstream).sum().backward()
    if kernel == "blockwise":
        out = blockwise_delta_output(x, weight, row_order, col_order, a, b, 0.5)
    else:
        out = fused_linear(x, weight, None, row_order, col_order, a, b, 0.5) - x @ weight.T
    (out * upstream).sum().backward()
    for name, t in factors.items():
        if name in trainable:
            torch.testing.assert_close(t.grad, ref[name].grad, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert t.grad is None, name
    assert autograd._BLOCKWISE_ARGS[:2] == ("into", "x") and autograd._FUSED_ARGS[:3] == ("x", "weight", "bias")


def test_blockwise_branch_is_added_in_place_to_the_base_output():
    torch.manual_seed(0)
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(24, 20)),
        smoa.SMoAConfig(r=4, num_blocks=2, target_modules=["0"], lora_dropout=0.2, init_lora_weights=False),
    )
    layer = next(iter(smoa.smoa_layers(model).values()))
    layer.train()
    base = layer.get_base_layer()
    seen = {}

    def base_forward(x):
        out = torch.nn.functional.linear(x, base.weight, base.bias)
        seen["ptr"], seen["copy"] = out.data_ptr(), out.detach().clone()
        return out

    base.forward = base_forward
    x = torch.randn(5, 24)
    layer.kernel = "blockwise"
    out = layer(x)
    assert out.data_ptr() == seen["ptr"]  # no separate branch tensor and sum
    kept = {}
    base.register_forward_hook(lambda _m, _i, output: kept.update(output=output))
    out = layer(x)
    assert out.data_ptr() != kept["output"].data_ptr()  # a hook's view of the base output stays the base output
    torch.testing.assert_close(kept["output"], base_forward(x))


def test_half_precision_base_takes_the_blockwise_kernel_and_matches_reference():
    torch.manual_seed(0)
    base = torch.nn.Linear(32, 24).to(torch.bfloat16)
    model = get_peft_model(
        torch.nn.Sequential(base), smoa.SMoAConfig(r=4, num_blocks=2, target_modules=["0"], init_lora_weights=False)
    )
    layer = next(iter(smoa.smoa_layers(model).values()))
    assert layer.smoa_A["default"][0].dtype == torch.float32
    x = torch.randn(3, 40, 32, dtype=torch.bfloat16)
    upstream = torch.randn(3, 40, 24, dtype=torch.bfloat16)
    layer.kernel = "reference"
    want = layer_run(layer, x, upstream)
    layer.kernel = "auto"
    assert not layer._fusable(x, ["default"], (), {})
    got = layer_run(layer, x, upstream)
    torch.testing.assert_close(got[0], want[0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got[1], want[1], rtol=1e-2, atol=1e-2)
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3)


def test_output_is_private_refuses_every_shared_output(monkeypatch):
    base = torch.nn.Linear(4, 3)
    out = base(torch.randn(2, 4))
    assert output_is_private(out, base)
    assert not output_is_private(out[:, :2], base)  # a view of another tensor
    assert not output_is_private(out.T, base)  # not contiguous
    assert not output_is_private(torch.zeros(2, 3, requires_grad=True), base)  # a leaf that requires grad
    handle = base.register_forward_hook(lambda *_: None)
    assert not output_is_private(out, base)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    assert not output_is_private(out, base)
    handle.remove()
    monkeypatch.delattr(torch.nn.modules.module, "_global_forward_hooks")  # a torch without the internal
    assert not output_is_private(out, base)


def test_a_hooked_base_layer_computes_what_the_blockwise_kernel_computes_bit_for_bit():
    """A forward hook on the base layer (FSDP2's, accelerate's) rules the fused kernel out; the layer then computes
    ``base(x) + Σ_k x ΔW_kᵀ`` exactly as ``kernel="blockwise"`` does unhooked (docs/scale-out.md)."""
    from tests.tiny import build_tiny_llama

    torch.manual_seed(0)
    base = build_tiny_llama(vocab_size=64, hidden_size=64, intermediate_size=128, max_position_embeddings=64)
    config = smoa.SMoAConfig(r=8, num_blocks=2, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    layers = smoa.smoa_layers(model).values()
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in layers:
            layer.kernel = "blockwise"
        blockwise = model(tokens).logits
        for layer in layers:
            layer.kernel = "auto"
        fused = model(tokens).logits
        hooks = [layer.get_base_layer().register_forward_hook(lambda *args: None) for layer in layers]
        hooked = model(tokens).logits
    for hook in hooks:
        hook.remove()
    assert torch.equal(hooked, blockwise)
    assert torch.allclose(fused, hooked, rtol=0, atol=1e-5)  # the same formula, summed in another order
