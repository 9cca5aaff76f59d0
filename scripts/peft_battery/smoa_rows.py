"""Rows for PEFT's own battery (its ``tests/test_custom_models.py``), added at run time by
``scripts/peft_battery/run.py``: SMoA at several r / K / branch ranks, with dropout, bias, modules_to_save and Conv1D,
and the out-of-tree baselines MeLoRA, MoRA (both types) and SSMLoRA. Nothing of PEFT's code is kept here."""

from __future__ import annotations

import smoa
from smoa.baselines import MeLoRAConfig, MoRAConfig, SSMLoRAConfig

SMOA = smoa.SMoAConfig
TEST_CASES = [
    ("Vanilla MLP 1 SMoA", "MLP", SMOA, {"target_modules": ["lin0"], "r": 4, "num_blocks": 2}),
    ("Vanilla MLP 2 SMoA", "MLP", SMOA, {"target_modules": ["lin0"], "r": 6, "num_blocks": 3}),
    ("Vanilla MLP 3 SMoA", "MLP", SMOA, {"target_modules": ["lin0", "lin1"], "r": 2, "num_blocks": 2}),
    ("Vanilla MLP 4 SMoA", "MLP", SMOA, {"target_modules": ["lin0"], "r": 4, "num_blocks": 2, "branch_ranks": [3, 1]}),
    ("Vanilla MLP 5 SMoA", "MLP", SMOA, {"target_modules": ["lin0"], "modules_to_save": ["lin1"], "r": 4}),
    ("Vanilla MLP 6 SMoA", "MLP", SMOA, {"target_modules": ["lin0"], "r": 4, "lora_dropout": 0.1}),
    ("Vanilla MLP 7 SMoAbias", "MLP", SMOA, {"target_modules": ["lin0"], "r": 4, "bias": "all"}),
    ("Vanilla MLP 8 SMoAoneblock", "MLP", SMOA, {"target_modules": ["lin0"], "r": 3, "num_blocks": 1}),
    ("Vanilla MLP 9 SMoA", "MLP", SMOA, {"target_modules": ["lin0"], "r": 4, "permutation": "identity"}),
    ("Embedding + transformers Conv1D 1 SMoA", "EmbConv1D", SMOA, {"target_modules": ["conv1d"], "r": 1,
                                                                   "num_blocks": 1}),
    ("Vanilla MLP 1 MeLoRA", "MLP", MeLoRAConfig, {"target_modules": ["lin0"], "r": [2, 2]}),
    ("Vanilla MLP 2 MeLoRA", "MLP", MeLoRAConfig, {"target_modules": ["lin0"], "r": [1, 1], "lora_alpha": 4.0,
                                                   "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 1 MoRA", "MLP", MoRAConfig, {"target_modules": ["lin0"], "r": 2, "mora_type": 6}),
    ("Vanilla MLP 2 MoRA", "MLP", MoRAConfig, {"target_modules": ["lin0"], "r": 2, "mora_type": 1}),
    ("Vanilla MLP 1 SSMLoRA", "MLP", SSMLoRAConfig, {"target_modules": ["lin0"], "r": 2, "lora_dropout": 0.0}),
]  # fmt: skip
MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES = [
    ("SMoA Same", "smoa", SMOA, {"target_modules": ["lin0"], "r": 4, "init_lora_weights": False},
     {"target_modules": ["lin0"], "r": 4, "init_lora_weights": False}),
    ("SMoA Different", "smoa", SMOA, {"target_modules": ["lin0"], "r": 4, "init_lora_weights": False},
     {"target_modules": ["lin1"], "r": 2, "init_lora_weights": False}),
]  # fmt: skip
#: Rows of PEFT's battery that cannot hold for a method, with the reason (test-name substring → reason).
_ONE_BIASED = "with bias='all' a model takes one adapter (the bias is shared by all), as PEFT's LoRA; the test adds two"
_BIAS_IS_BASE = (
    "bias='all' trains the base layers' biases, which the test counts as base parameters: they get gradients, change "
    "in training and are not reverted by disabling the adapter (as with PEFT's LoRA bias='all')"
)
SKIPS = {
    "SMoAbias": {
        "adapter_name_substring": _ONE_BIASED,
        "low_cpu_mem_usage": _ONE_BIASED,
        "multiple_adapters": _ONE_BIASED,
        "dtype_autocast": _ONE_BIASED,
        "active_adapter": _ONE_BIASED,
        "delete": _ONE_BIASED,
        "training_custom_models": _BIAS_IS_BASE,
        "only_params_are_updated": _BIAS_IS_BASE,
        "disable_adapters": _BIAS_IS_BASE,
    },
    "SSMLoRA": {
        "merge": "SSMLoRA carries a recurrent state across calls and cannot be merged into the weights",
        "unload": "SSMLoRA cannot be merged",
        "merging": "SSMLoRA cannot be merged",
        "forward_float16": "the test merges the adapter; SSMLoRA cannot be merged",
        "forward_bfloat16": "the test merges the adapter; SSMLoRA cannot be merged",
        "only_params_are_updated": "its zero-initialised r×r state maps act on a carried state that starts at zero, "
        "so the battery's few steps leave them unchanged",
    },
}


def add_rows(namespace: dict) -> None:
    """Append this project's rows to PEFT's parametrisation lists, and teach the battery's "not an identity at init"
    helper this project's switch (``init_lora_weights=False``, the authors' name), as it knows PEFT's own methods'.
    Called from the patched test module with its ``globals()``."""
    import sys

    namespace["TEST_CASES"].extend(TEST_CASES)
    namespace["MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES"].extend(MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES)
    original = namespace["set_init_weights_false"]
    ours = (SMOA, MeLoRAConfig, MoRAConfig, SSMLoRAConfig)

    def set_init_weights_false(config_cls, kwargs):
        if config_cls in ours:
            return {**kwargs, "init_lora_weights": False}
        return original(config_cls, kwargs)

    namespace["set_init_weights_false"] = set_init_weights_false
    package = namespace["__name__"].rpartition(".")[0]
    for name in ("testing_common", "testing_utils"):
        module = sys.modules.get(f"{package}.{name}")
        if module is not None and hasattr(module, "set_init_weights_false"):
            module.set_init_weights_false = set_init_weights_false
