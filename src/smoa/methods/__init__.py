"""The one registry of methods: a method name → its PEFT config for a model and a budget, and what it costs.

Every method of the paper's comparison is here: ``smoa`` (the method), PEFT's built-ins ``lora``, ``dora``, ``hira``,
``prompt_tuning``, ``p_tuning``, ``p_tuning_v2`` (PEFT's prefix tuning), and the out-of-tree baselines ``melora``,
``mora`` (type 6), ``mora1`` (type 1) and ``ssmlora`` (``smoa.baselines``).

Budgets:

- ``"paper"``: each method's published setting (``PAPER_SETTINGS`` below, on the SMoA paper's targets
  q_proj, k_proj, v_proj, up_proj, down_proj for the weight adapters).
- ``"matched"``: one hyperparameter per method (its *knob*: a rank, a number of virtual tokens, an encoder width) is
  chosen so the trainable count is closest to a target (default: SMoA's paper budget on that model). The plan
  reports the achieved count; it is within ±2% whenever the knob's granularity allows, and a target outside the
  method's whole range raises ``BudgetUnreachableError``.

Counting is analytic, from the target layers' shapes, so it works on a model built on the meta device from its
config alone (``load_model_spec("llama-2-7b")``): no weights are needed. Per adapted dense layer
``W: (d_out, d_in)``:

| method | trainable | update-rank ceiling |
|---|---|---|
| LoRA, HiRA | r (d_in + d_out) | LoRA: min(r, d_in, d_out); HiRA (W0 ⊙ BA): min(d_in, d_out) |
| DoRA | r (d_in + d_out) + d_out | min(d_in, d_out) (the magnitude rescales every column) |
| SMoA | Σ_k r_k (|R_k| + |C_k|) | Σ_k min(|R_k|, |C_k|, r_k · min(|R_k|, |C_k|)) |
| MeLoRA | Σ_i r_i (d_in + d_out) / n | Σ_i min(r_i, d_in/n, d_out/n) |
| MoRA | r̂², r̂ = ⌊√((d_in+d_out) r) + ½⌋ (even for type 6) | type 1: min(r̂, d_in, d_out); type 6: min(d_in, d_out) |
| SSMLoRA | r (d_in + d_out) + 2 r² | r (output in span W_b; not a linear update) |

Prompt learning (d = hidden size, n virtual tokens, L layers, d_kv = key/value width): prompt tuning ``n d``;
P-tuning ``n d + (d h + h) + (h² + h) + (h d + d)`` (MLP encoder of width h); prefix tuning ``n · L · 2 · d_kv``.
Params% as the papers print it: ``100 · trainable / (base + trainable)``.

The package is split along its jobs: :mod:`.specs` (the base model's layer shapes), :mod:`.formulas` (each method's
count, ceiling and config), :mod:`.registry` (the methods and their paper settings), :mod:`.planning` (budgets) and
:mod:`.saved` (checking and loading saved adapter folders). Import everything from ``smoa.methods``.
"""

from .formulas import prompt_dims
from .planning import (
    BUDGETS,
    DEFAULT_TARGETS,
    DEFAULT_TOLERANCE,
    Budget,
    BudgetUnreachableError,
    MethodPlan,
    build_peft_config,
    closest_knob,
    matched_target,
    plan_all,
    plan_method,
)
from .registry import PAPER_SETTINGS, MethodSpec, UnknownMethodError, get_method, method_names
from .saved import AdapterFolderError, check_adapter_folder, load_adapter
from .specs import (
    DENSE_TYPES,
    NAMED_MODELS,
    LayerShape,
    ModelSpec,
    UnsupportedTargetError,
    block_index,
    load_model_spec,
    model_spec_from_module,
    named_model_config,
)

__all__ = [
    "BUDGETS",
    "DEFAULT_TARGETS",
    "DEFAULT_TOLERANCE",
    "DENSE_TYPES",
    "NAMED_MODELS",
    "PAPER_SETTINGS",
    "AdapterFolderError",
    "Budget",
    "BudgetUnreachableError",
    "LayerShape",
    "MethodPlan",
    "MethodSpec",
    "ModelSpec",
    "UnknownMethodError",
    "UnsupportedTargetError",
    "block_index",
    "build_peft_config",
    "check_adapter_folder",
    "closest_knob",
    "get_method",
    "load_adapter",
    "load_model_spec",
    "matched_target",
    "method_names",
    "model_spec_from_module",
    "named_model_config",
    "plan_all",
    "plan_method",
    "prompt_dims",
]
