"""SMoA through the standard PEFT API, on an MLP, a tiny Llama and a tiny GPT-2: what is SMoA's own (the formula
against a dense reference, saved orders, fingerprints, several active adapters, sequential merges, kernels' state).
The behaviour checks every method passes (identity at init, save / load, merge / unmerge, disable_adapter, two
adapters, training only the adapter, the registry's count) are SMoA's rows of tests/baselines/test_battery.py."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

import smoa
from smoa.dense import UnsupportedLayerError
from tests.adapter.conftest import LLAMA_TARGETS, make_gpt2, make_llama, make_mlp
from tests.adapter.test_functional import reference_delta, reference_scores


def smoa_config(**kwargs) -> smoa.SMoAConfig:
    defaults = dict(r=4, num_blocks=2, lora_alpha=8, target_modules=LLAMA_TARGETS, init_lora_weights=False)
    defaults.update(kwargs)
    return smoa.SMoAConfig(**defaults)


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


# ------------------------------------------------------------------------------------------------- the formula
GPT2_TARGETS = ["c_attn", "c_fc", "mlp.c_proj"]


@pytest.mark.parametrize("factory,targets", [(make_llama, LLAMA_TARGETS), (make_gpt2, GPT2_TARGETS)])
def test_layer_matches_independent_dense_reference(factory, targets, tokens):
    base = factory()
    model = get_peft_model(copy.deepcopy(base), smoa_config(target_modules=targets, r=5, num_blocks=3))
    layers = smoa.smoa_layers(model)
    assert len(layers) == 2 * len(targets)
    for name, layer in layers.items():
        weight = layer.get_base_layer().weight.detach()
        w0 = weight.T if isinstance(layer.get_base_layer(), Conv1D) else weight
        # orders from the reference scores, independent of the library's SVD code path
        u, s, vh = torch.linalg.svd(w0.float(), full_matrices=False)
        ref_row, ref_col = reference_scores(u, s, vh.T)
        assert torch.equal(layer.smoa_row_order["default"], torch.argsort(ref_row.float(), stable=True)), name
        assert torch.equal(layer.smoa_col_order["default"], torch.argsort(ref_col.float(), stable=True)), name
        a, b = list(layer.smoa_A["default"]), list(layer.smoa_B["default"])
        assert [t.shape[0] for t in a] == [2, 2, 1]  # r=5 over 3 blocks: remainder to the first
        expected = reference_delta(w0, layer.smoa_row_order["default"], layer.smoa_col_order["default"], a, b, 8 / 5)
        delta = layer.get_delta_weight("default")
        delta_eff = delta.T if layer.fan_in_fan_out else delta
        torch.testing.assert_close(delta_eff.double(), expected, rtol=1e-5, atol=1e-6)
        x = torch.randn(3, w0.shape[1])
        with torch.no_grad():
            torch.testing.assert_close(layer(x), layer.get_base_layer()(x) + (x.double() @ expected.T).float())


# --------------------------------------------------------------------------------------------- save and load
@pytest.mark.parametrize(
    "factory,targets,low_cpu_mem_usage",
    [(make_llama, LLAMA_TARGETS, False), (make_llama, LLAMA_TARGETS, True), (make_gpt2, GPT2_TARGETS, False)],
)
def test_save_load_roundtrip_is_bit_identical_without_svd(
    tmp_path, tokens, monkeypatch, factory, targets, low_cpu_mem_usage
):
    model = get_peft_model(factory(), smoa_config(target_modules=targets))
    expected = logits(model, tokens)
    model.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "adapter_model.safetensors")

    def no_svd(*args, **kwargs):
        raise AssertionError("loading a saved SMoA adapter must not run an SVD")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    torch.manual_seed(1234)  # another RNG state must not matter
    loaded = PeftModel.from_pretrained(factory(), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
    torch.testing.assert_close(logits(loaded, tokens), expected, rtol=0, atol=0)
    for name, layer in smoa.smoa_layers(loaded).items():
        original = smoa.smoa_layers(model)[name]
        assert torch.equal(layer.smoa_row_order["default"], original.smoa_row_order["default"])


def test_saved_orders_win_over_a_recomputed_svd(tmp_path, tokens):
    # orders stored in the file are used even if a new SVD would give different ones
    model = get_peft_model(make_llama(), smoa_config(permutation="random", permutation_seed=5))
    expected = logits(model, tokens)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_llama(), tmp_path)
    torch.testing.assert_close(logits(loaded, tokens), expected, rtol=0, atol=0)


def test_mismatched_base_is_refused_and_can_be_overridden(tmp_path, tokens):
    model = get_peft_model(make_llama(seed=0), smoa_config())
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trained on a different base weight"):
        PeftModel.from_pretrained(make_llama(seed=1), tmp_path)
    config = smoa.SMoAConfig.from_pretrained(tmp_path)
    config.base_fingerprint_check = "off"
    loaded = PeftModel.from_pretrained(make_llama(seed=1), tmp_path, config=config)
    saved = {n: p for n, p in model.named_parameters() if "smoa_" in n}
    got = {n: p for n, p in loaded.named_parameters() if "smoa_" in n}
    assert got.keys() == saved.keys() and all(torch.equal(got[n], saved[n]) for n in saved)
    # a base in another dtype is the same base: it loads, with the saved block orders
    bf16 = PeftModel.from_pretrained(make_llama(seed=0).to(torch.bfloat16), tmp_path)
    layers, saved_layers = smoa.smoa_layers(bf16), smoa.smoa_layers(model)
    assert layers.keys() == saved_layers.keys()
    for name, layer in layers.items():
        assert torch.equal(layer.smoa_row_order["default"], saved_layers[name].smoa_row_order["default"])


def test_corrupted_adapter_file_is_named(tmp_path):
    model = get_peft_model(make_llama(), smoa_config())
    model.save_pretrained(tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is corrupted"):
        PeftModel.from_pretrained(make_llama(), tmp_path)


def test_adapter_file_not_matching_its_config_is_named(tmp_path):
    model = get_peft_model(make_llama(), smoa_config(r=4, num_blocks=2))
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace('"num_blocks": 2', '"num_blocks": 4'))
    with pytest.raises(ValueError, match="num_blocks=4"):
        PeftModel.from_pretrained(make_llama(), tmp_path)


def test_corrupted_orders_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = get_peft_model(make_llama(), smoa_config())
    model.save_pretrained(tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    tensors = load_file(file)
    key = next(k for k in tensors if k.endswith("smoa_row_order"))
    tensors[key] = torch.zeros_like(tensors[key])
    save_file(tensors, file)
    with pytest.raises(ValueError, match="not a permutation"):
        PeftModel.from_pretrained(make_llama(), tmp_path)


# -------------------------------------------------------------------------------------------------- merging
def test_safe_merge_refuses_broken_adapter_and_keeps_weights():
    model = get_peft_model(make_llama(), smoa_config())
    layer = next(iter(smoa.smoa_layers(model).values()))
    before = layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        layer.smoa_B["default"][0][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, before)


def test_several_adapters(tokens):
    base = make_llama()
    base_out = logits(base, tokens)
    model = get_peft_model(base, smoa_config(), adapter_name="one")
    model.add_adapter("two", smoa_config(r=2, num_blocks=2, permutation="identity"))
    out_a = logits(model, tokens)
    model.set_adapter("two")
    out_b = logits(model, tokens)
    assert not torch.allclose(out_a, out_b)
    # several active adapters: both updates add up on the original W0
    model.base_model.set_adapter(["one", "two"])
    layer = next(iter(smoa.smoa_layers(model).values()))
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        want = layer.get_base_layer()(x) + x @ layer.get_delta_weight("one").T + x @ layer.get_delta_weight("two").T
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)
    both = logits(model, tokens)
    model.delete_adapter("two")
    assert "two" not in layer.smoa_A and "two" not in layer.smoa_row_order and "two" not in layer.smoa_fingerprint
    model.set_adapter("one")
    torch.testing.assert_close(logits(model, tokens), out_a)
    assert not torch.allclose(both, base_out)


def test_sequential_merge_equals_batch_merge(tokens):
    def two_adapter_model():
        model = get_peft_model(make_llama(), smoa_config(), adapter_name="one")
        model.add_adapter("two", smoa_config(r=6, num_blocks=3, permutation="random"))
        return model

    sequential = two_adapter_model()
    sequential.base_model.merge_adapter(["one"])
    sequential.base_model.merge_adapter(["two"])
    batch = two_adapter_model()
    batch.base_model.merge_adapter(["one", "two"])
    for (name, seq_layer), batch_layer in zip(
        smoa.smoa_layers(sequential).items(), smoa.smoa_layers(batch).values(), strict=True
    ):
        torch.testing.assert_close(
            seq_layer.get_base_layer().weight, batch_layer.get_base_layer().weight, rtol=1e-6, atol=1e-7, msg=name
        )
    unmerged = two_adapter_model()
    unmerged.base_model.set_adapter(["one", "two"])
    torch.testing.assert_close(logits(sequential, tokens), logits(unmerged, tokens), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ dtypes and modes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_bases(dtype, tokens):
    reference = get_peft_model(make_llama(), smoa_config())
    half_base = make_llama().to(dtype)
    model = get_peft_model(half_base, smoa_config())
    layer = next(iter(smoa.smoa_layers(model).values()))
    assert layer.smoa_A["default"][0].dtype == torch.float32  # PEFT's autocast of adapter weights
    out = logits(model, tokens)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), logits(reference, tokens), rtol=0.05, atol=0.05)
    model.train()
    model(tokens, labels=tokens).loss.backward()
    assert layer.smoa_A["default"][0].grad is not None
    model.merge_adapter()
    assert layer.get_base_layer().weight.dtype == dtype


def test_gradient_checkpointing_gives_same_gradients(tokens):
    def grads(checkpointing: bool):
        model = get_peft_model(make_llama(), smoa_config())
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(tokens, labels=tokens).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_generate(tokens):
    model = get_peft_model(make_llama(), smoa_config())
    out = model.generate(input_ids=tokens[:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 9)
    merged = copy.deepcopy(model).merge_and_unload()
    want = merged.generate(input_ids=tokens[:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out, want)  # the unmerged adapter decodes the merged model's greedy tokens


# -------------------------------------------------------------------------------------------- lean state
@pytest.mark.parametrize("kernel,dropout", [("auto", 0.0), ("blockwise", 0.0), ("auto", 0.2)])
def test_layer_holds_no_dense_matrix_and_saves_none_for_backward(kernel, dropout):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 96))
    config = smoa.SMoAConfig(r=4, num_blocks=2, target_modules=["0"], lora_dropout=dropout, init_lora_weights=False)
    model = get_peft_model(base, config)
    layer = next(iter(smoa.smoa_layers(model).values()))
    layer.kernel = kernel
    layer.train()
    d = layer.out_features * layer.in_features
    weight = layer.get_base_layer().weight

    def own_tensors():
        for name, t in layer.named_parameters():
            if not name.startswith("base_layer"):
                yield name, t
        for name, t in layer.named_buffers():
            if not name.startswith("base_layer"):
                yield name, t
        for name, value in vars(layer).items():
            if isinstance(value, torch.Tensor):
                yield name, value

    x = torch.randn(4, 64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    out.sum().backward()
    assert all(t.numel() < d // 2 for _, t in own_tensors())
    big = [tuple(t.shape) for t in saved if t.numel() >= d // 2 and t.data_ptr() != weight.data_ptr()]
    assert big == [], f"tensors of d_out*d_in/K or more saved for backward: {big}"
    # while merged, the only extra is the CPU copy needed for exact unmerge
    before = weight.detach().clone()
    layer.merge()
    kept = layer.merge_snapshot.original
    assert kept is not None and kept.device.type == "cpu" and torch.equal(kept, before)
    layer.unmerge()
    assert layer.merge_snapshot.original is None and not layer.merge_snapshot.taken
    assert torch.equal(weight, before)


# --------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(r=0), "r=0"),
        (dict(num_blocks=0), "num_blocks=0"),
        (dict(r=1, num_blocks=2), "r=1"),
        (dict(branch_ranks=[4], num_blocks=2), "branch_ranks"),
        (dict(branch_ranks=[2, 3], num_blocks=2, r=4), "sum to r=4"),
        (dict(branch_ranks=[4, 0], num_blocks=2, r=4), "rank >= 1"),
        (dict(lora_dropout=1.0), "lora_dropout=1.0"),
        (dict(lora_dropout=-0.1), "lora_dropout=-0.1"),
        (dict(permutation="sorted"), "permutation='sorted'"),
        (dict(base_fingerprint_check="maybe"), "base_fingerprint_check"),
        (dict(bias="some"), "bias='some'"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match="SMoAConfig") as info:
        smoa.SMoAConfig(target_modules=["q_proj"], **kwargs)
    assert field in str(info.value)


def test_too_many_blocks_for_a_layer_names_the_module():
    with pytest.raises(ValueError, match=r"num_blocks=20 .*'lin1'"):
        get_peft_model(make_mlp(), smoa.SMoAConfig(r=20, num_blocks=20, target_modules=["lin1"]))


@pytest.mark.parametrize("target,kind", [("emb", "Embedding"), ("conv", "Conv2d")])
def test_unsupported_layer_type_names_module_and_type(target, kind):
    with pytest.raises(UnsupportedLayerError, match=rf"'{target}' of type .*{kind}"):
        get_peft_model(make_mlp(), smoa.SMoAConfig(r=2, num_blocks=2, target_modules=[target]))


def test_non_finite_base_weight_is_refused_before_svd(monkeypatch):
    mlp = make_mlp()
    with torch.no_grad():
        mlp.lin0.weight[0, 0] = float("inf")
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: pytest.fail("SVD ran on a non-finite weight"))
    with pytest.raises(ValueError, match=r"'lin0' has 1 NaN/Inf"):
        get_peft_model(mlp, smoa.SMoAConfig(r=2, num_blocks=2, target_modules=["lin0"]))


def test_mlp_with_branch_ranks_and_identity_order():
    model = get_peft_model(
        make_mlp(),
        smoa.SMoAConfig(
            r=5, num_blocks=2, branch_ranks=[4, 1], target_modules=["lin0", "lin1"], permutation="identity"
        ),
    )
    layer = smoa.smoa_layers(model)["base_model.model.lin0"]
    assert [tuple(a.shape) for a in layer.smoa_A["default"]] == [(4, 10), (1, 10)]
    assert [tuple(b.shape) for b in layer.smoa_B["default"]] == [(12, 4), (12, 1)]
    assert torch.equal(layer.smoa_row_order["default"], torch.arange(24))
