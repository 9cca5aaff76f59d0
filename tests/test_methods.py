"""The method registry: paper numbers, matched budgets, analytic counts equal PEFT's, and errors for bad input."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from smoa.adapter import functional as F
from smoa.cli.main import main
from smoa.methods import (
    BudgetUnreachableError,
    UnknownMethodError,
    UnsupportedTargetError,
    build_peft_config,
    get_method,
    load_model_spec,
    method_names,
    plan_all,
    plan_method,
)
from tests import tiny

ALL = (
    "smoa", "lora", "dora", "hira", "melora", "mora", "mora1", "ssmlora", "prompt_tuning", "p_tuning", "p_tuning_v2",
)  # fmt: skip


@pytest.fixture(scope="module")
def llama2():
    return load_model_spec("llama-2-7b")


def tiny_llama_config() -> LlamaConfig:
    return tiny.tiny_llama_config(hidden_size=64, intermediate_size=128, vocab_size=97)


def test_registry_names() -> None:
    assert method_names() == ALL


def test_lora_r32_llama2_params_percent(llama2) -> None:
    """HiRA Table 1: LoRA r = 32 on q,k,v,up,down of Llama-2-7B is 56,098,816 trainable, 0.8256%."""
    assert llama2.base_params == 6_738_415_616
    plan = plan_method("lora", llama2)
    assert plan.trainable_params == 56_098_816
    assert f"{plan.params_percent:.4f}" == "0.8256"
    assert plan.rank_ceilings == dict.fromkeys(("q_proj", "k_proj", "v_proj", "up_proj", "down_proj"), 32)


def test_named_configs_have_real_sizes() -> None:
    assert load_model_spec("llama-3-8b").base_params == 8_030_261_248
    assert load_model_spec("smollm2-135m").base_params == 134_515_008


def test_smoa_formulas(llama2) -> None:
    assert F.split_sizes(11, 3) == [4, 4, 3]
    assert F.trainable_parameters(4096, 4096, [16, 16]) == 16 * (2048 + 2048) * 2
    assert F.trainable_parameters(7, 5, [2, 1]) == 2 * (4 + 3) + 1 * (3 + 2)  # rows split 4,3; cols 3,2
    assert F.rank_ceiling(512, 512, [8, 8]) == 512
    assert F.rank_ceiling(5, 7, [1, 0]) == 3  # block 2 has no rank
    plan = plan_method("smoa", llama2)
    assert plan.trainable_params == plan_method("lora", llama2, r=16).trainable_params  # SMoA(32, K=2) = LoRA r=16


@pytest.mark.parametrize("model", ["llama-2-7b", "llama-3-8b", "smollm2-135m"])
def test_matched_budgets_within_two_percent(model: str) -> None:
    spec = load_model_spec(model)
    for plan in plan_all(spec, "matched"):
        if isinstance(plan, BudgetUnreachableError):
            assert "prompt_tuning" in str(plan)  # n·d needs more virtual tokens than the context holds
            continue
        if abs(plan.deviation) <= 0.02:
            continue
        # otherwise only the knob's granularity may be the reason: both neighbours must be farther from the target
        method = get_method(plan.method)
        knob = plan.settings[method.knob]
        for value in (knob - 1, knob + 1):
            neighbour = plan_method(plan.method, spec, "paper", **method.with_knob(plan.settings, value))
            assert abs(neighbour.trainable_params - plan.target_params) >= abs(
                plan.trainable_params - plan.target_params
            )
        assert (plan.method, model) == ("ssmlora", "smollm2-135m")  # the one known case: r=16 is +2.3%, r=15 is -4%


def test_matched_explicit_target_and_mixed_ranks(llama2) -> None:
    plan = plan_method("dora", llama2, "matched", target_params=30_000_000)
    assert abs(plan.deviation) <= 0.02
    assert plan.settings["rank_pattern"]  # uniform ranks miss by 3%: some blocks get r + 1
    assert plan.peft_config().rank_pattern == plan.settings["rank_pattern"]


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(UnknownMethodError, match="unknown method 'loraa'; known methods: smoa, lora, dora"):
        plan_method("loraa", "smollm2-135m")


def test_unreachable_budget(llama2) -> None:
    with pytest.raises(BudgetUnreachableError, match=r"lora cannot reach 10 trainable parameters.*r=1"):
        plan_method("lora", llama2, "matched", target_params=10)
    with pytest.raises(BudgetUnreachableError, match="prompt_tuning cannot reach"):
        plan_method("prompt_tuning", llama2, "matched", target_params=10**9)


def test_unsupported_layer_type_and_missing_targets(llama2) -> None:
    with pytest.raises(UnsupportedTargetError, match=r"'model\.embed_tokens' of type Embedding"):
        plan_method("mora", llama2, target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(UnsupportedTargetError, match="no module of llama-2-7b matches"):
        plan_method("lora", llama2, target_modules=["c_attn"])
    with pytest.raises(UnsupportedTargetError, match=r"MeLoRA with n=7 .*'model\.layers\.0\.self_attn\.q_proj'"):
        plan_method("melora", llama2, num_minis=7)


@pytest.mark.parametrize("name", [n for n in ALL if n != "smoa"])
@pytest.mark.parametrize("budget", ["paper", "matched"])
def test_analytic_count_equals_peft(name: str, budget: str) -> None:
    """The registry's count (meta device, no weights) equals PEFT's count on the real tiny model."""
    config = tiny_llama_config()
    target = 4_000 if budget == "matched" else None
    plan = plan_method(name, config, budget, target_params=target)
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), plan.peft_config())
    assert model.get_nb_trainable_parameters()[0] == plan.trainable_params
    assert model.get_nb_trainable_parameters()[1] == plan.base_params + plan.trainable_params


def test_smoa_config_and_count() -> None:
    from smoa.adapter import SMoAConfig

    config = tiny_llama_config()
    plan = plan_method("smoa", config)
    peft_config = plan.peft_config()
    assert isinstance(peft_config, SMoAConfig) and peft_config.r == 32 and peft_config.num_blocks == 2
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), peft_config)
    assert model.get_nb_trainable_parameters()[0] == plan.trainable_params


def test_build_peft_config_for_own_methods() -> None:
    config = build_peft_config("mora1", "smollm2-135m")
    assert config.peft_type == "MORA" and config.mora_type == 1 and config.r == 32
    config = build_peft_config("melora", "smollm2-135m", "matched")
    assert config.peft_type == "MELORA" and len(config.r) == 8


def test_cli_table(capsys) -> None:
    assert main(["methods", "--model", "llama-2-7b"]) == 0
    out = capsys.readouterr().out
    lora_row = next(line for line in out.splitlines() if line.startswith("lora "))
    assert "56,098,816" in lora_row and "0.8256" in lora_row and "yes" in lora_row
    ssm_row = next(line for line in out.splitlines() if line.startswith("ssmlora "))
    assert ssm_row.rstrip().endswith("no")
    assert main(["methods", "--model", "smollm2-135m", "--budget", "matched", "--methods", "lora,mora"]) == 0
    assert "vs target" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config_text", "weights", "message"),
    [
        ("{not json", True, r"adapter_config.json is not valid JSON"),
        ("[1, 2]", True, r"must hold a JSON object, not list"),
        ('{"r": 8}', True, r"has no 'peft_type' string"),
        ('{"peft_type": "NOPE"}', True, r"peft_type 'NOPE' is not a PEFT method known here"),
        ('{"peft_type": "LORA"}', False, r"holds adapter_config.json but no weights"),
    ],
)
def test_a_broken_adapter_folder_is_named(tmp_path, config_text, weights, message):
    from smoa.methods import AdapterFolderError, check_adapter_folder

    (tmp_path / "adapter_config.json").write_text(config_text)
    if weights:
        (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(AdapterFolderError, match=message):
        check_adapter_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_adapter_folder(tmp_path / "missing")
