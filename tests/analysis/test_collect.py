"""The collector: ΔW read by merging, for every method; covariances from hooks; whole-model analyses."""

from __future__ import annotations

import pytest
import torch
from peft import HiraConfig, LoraConfig

from smoa import SMoAConfig
from smoa.adapter import functional as F
from smoa.analysis import collect as C
from smoa.analysis import spectral as S
from smoa.baselines import MeLoRAConfig, MoRAConfig, SSMLoRAConfig
from tests.analysis.conftest import TARGETS, adapted, calibration_batches, tiny_gpt2, tiny_llama


def test_lora_rank_five_through_the_model_and_weights_restored() -> None:
    base = tiny_llama()
    model = adapted(base, LoraConfig(r=5, lora_alpha=5, target_modules=TARGETS, init_lora_weights=False))
    layers = C.adapted_layers(model)
    assert len(layers) == 2 * len(TARGETS)
    name, layer = next(iter(layers.items()))
    assert name == "model.layers.0.self_attn.q_proj"
    weight = layer.get_base_layer().weight
    kept = weight.detach().clone()
    w0, w1 = C.merged_update(layer, "default")
    assert w0.dtype == torch.float64 and w0.shape == (layer.out_features, layer.in_features)
    assert torch.equal(weight, kept) and weight.dtype == torch.float32 and not layer.merged
    torch.testing.assert_close(w1 - w0, layer.get_delta_weight("default").double(), atol=1e-6, rtol=1e-6)
    analysis = C.SpectralAnalyzer(progress=False).analyse_model(model, "lora5")
    assert [x.rank for x in analysis.layers] == [5] * 10
    assert [x.ceiling for x in analysis.layers] == [5] * 10
    assert analysis.summary()["mean_rank"] == 5


def test_hira_update_is_w0_times_ba_not_get_delta_weight() -> None:
    model = adapted(tiny_llama(), HiraConfig(r=4, target_modules=["q_proj"], init_weights=False))
    layer = next(iter(C.adapted_layers(model).values()))
    w0, w1 = C.merged_update(layer, "default")
    ba = (layer.hira_B["default"] @ layer.hira_A["default"]).double()
    torch.testing.assert_close(w1 - w0, w0 * ba, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(w1 - w0, ba)


@pytest.mark.parametrize(
    "config",
    [
        MeLoRAConfig(r=[2] * 4, target_modules=["q_proj"], init_lora_weights=False),
        MoRAConfig(r=4, mora_type=6, target_modules=["q_proj"], init_lora_weights=False),
        LoraConfig(r=3, target_modules=["q_proj"], init_lora_weights=False, use_dora=True),
    ],
    ids=["melora", "mora", "dora"],
)
def test_merged_update_of_other_methods_is_their_update(config) -> None:
    model = adapted(tiny_llama(), config)
    layer = next(iter(C.adapted_layers(model).values()))
    w0, w1 = C.merged_update(layer, "default")
    x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = layer(x).double()
        base = layer.get_base_layer()(x).double()
    torch.testing.assert_close(x.double() @ (w1 - w0).T, out - base, atol=1e-5, rtol=1e-4)


def test_smoa_update_matches_its_formula_and_conv1d_layout() -> None:
    model = adapted(tiny_gpt2(), SMoAConfig(r=4, num_blocks=2, target_modules=["c_attn"], init_lora_weights=False))
    layer = next(iter(C.adapted_layers(model).values()))
    w0, w1 = C.merged_update(layer, "default")
    assert w0.shape == (96, 32)  # (d_out, d_in), although GPT-2 stores (d_in, d_out)
    torch.testing.assert_close(w1 - w0, layer.get_delta_weight("default").T.double(), atol=1e-6, rtol=1e-6)


def test_identity_adapter_gives_zero_rank_and_zero_shift() -> None:
    base = tiny_llama()
    model = adapted(base, SMoAConfig(r=8, num_blocks=2, target_modules=TARGETS))  # B = 0: the identity
    layers = C.adapted_layers(model)
    covariances = C.activation_covariances(model, layers, calibration_batches(), progress=False)
    analysis = C.SpectralAnalyzer(covariances, progress=False).analyse_model(model, "identity")
    for x in analysis.layers:
        assert (x.rank, x.relative_rank, x.frobenius, x.intruders) == (0, 0, 0.0, [])
        assert x.shift == x.random_shift == {"head": 0.0, "middle": 0.0, "tail": 0.0}
        assert x.alignment_after == x.alignment_before
        assert x.ceiling == F.rank_ceiling(x.d_out, x.d_in, [4, 4])
    summary = analysis.summary()
    assert summary["mean_rank"] == 0 and summary["shift"]["tail"] == 0.0


def test_smoa_update_is_high_rank_and_lora_is_not() -> None:
    base = tiny_llama()
    smoa_model = adapted(base, SMoAConfig(r=8, num_blocks=2, target_modules=["q_proj"], init_lora_weights=False))
    lora_model = adapted(base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    analyzer = C.SpectralAnalyzer(progress=False)
    smoa_ranks = [x.relative_rank for x in analyzer.analyse_model(smoa_model).layers]
    lora_ranks = [x.relative_rank for x in analyzer.analyse_model(lora_model).layers]
    assert smoa_ranks == [48, 48] and lora_ranks == [4, 4]


def test_covariance_equals_the_layer_input_gram_matrix() -> None:
    base = tiny_llama()
    model = adapted(base, LoraConfig(r=2, target_modules=["q_proj", "k_proj", "up_proj"]))
    layers = C.adapted_layers(model)
    batches = calibration_batches(3, 7)
    covariances = C.activation_covariances(model, layers, batches, progress=False)
    blocks = model.base_model.model.model
    with torch.no_grad():
        x = torch.cat([blocks.layers[0].input_layernorm(blocks.embed_tokens(ids))[0] for ids in batches]).double()
    for kind in ("q_proj", "k_proj"):  # the same input tensor: one shared Gram matrix per batch
        torch.testing.assert_close(covariances[f"model.layers.0.self_attn.{kind}"], x.T @ x / x.shape[0])
    assert not torch.allclose(covariances["model.layers.0.mlp.up_proj"], covariances["model.layers.0.self_attn.q_proj"])
    centred = C.activation_covariances(model, layers, batches, centre=True, progress=False)
    xc = x - x.mean(dim=0)
    torch.testing.assert_close(centred["model.layers.0.self_attn.q_proj"], xc.T @ xc / x.shape[0])


def test_not_mergeable_method_is_reported_not_crashed() -> None:
    model = adapted(tiny_llama(), SSMLoRAConfig(r=4, target_modules=["q_proj"]))
    analysis = C.SpectralAnalyzer(progress=False).analyse_model(model, "ssm")
    assert analysis.layers == [] and "cannot be merged" in analysis.not_analysable
    assert "not_analysable" in analysis.summary()
    layer = next(iter(C.adapted_layers(model).values()))
    with pytest.raises(C.NotAnalysableError, match="cannot be merged"):
        C.merged_update(layer, "default")


def test_method_names_and_ceilings_from_configs() -> None:
    assert C.method_of(LoraConfig(r=4, use_dora=True)) == "dora"
    assert C.method_of(SMoAConfig(r=4)) == "smoa"
    melora = MeLoRAConfig(r=[2] * 4, target_modules=["q_proj"])
    settings = C.registry_settings("melora", melora)
    assert C.layer_ceiling("melora", settings, "model.layers.0.q_proj", 48, 48) == 8
    assert C.registry_settings("melora", MeLoRAConfig(r=[1, 2], target_modules=["q_proj"])) is None


def test_analyse_adapters_loads_saved_folders_and_leaves_base_untouched(tmp_path) -> None:
    base = tiny_llama()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    for name, config in {
        "smoa": SMoAConfig(r=8, num_blocks=2, target_modules=TARGETS, init_lora_weights=False),
        "lora": LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False),
    }.items():
        adapted(base, config).save_pretrained(tmp_path / name)
    results = C.analyse_adapters(base, [tmp_path / "smoa", tmp_path / "lora"], calibration_batches(), progress=False)
    assert [r.method for r in results] == ["smoa", "lora"]
    assert all(len(r.layers) == 10 and r.layers[0].alignment_after is not None for r in results)
    assert results[0].layers[0].block_energy is not None
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        C.analyse_adapters(base, [tmp_path], progress=False)
    assert all(tuple(layer.shift) == S.REGIONS for r in results for layer in r.layers)  # one value per region


@pytest.mark.parametrize(("env", "shown"), [("0", False), ("1", True)])
def test_analysis_bar_follows_smoa_progress(monkeypatch, capsys, env, shown) -> None:
    monkeypatch.setenv("SMOA_PROGRESS", env)
    model = adapted(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    C.SpectralAnalyzer(progress=True).analyse_model(model, "lora2")
    assert ("analyse lora2" in capsys.readouterr().err) is shown
