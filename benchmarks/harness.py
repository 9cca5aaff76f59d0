"""The benchmarks' shared harness: the methods as PEFT wraps them (and the authors' forward), the layers and
models they wrap, one training step, interleaved medians, and peak memory measured in a fresh process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from smoa._memory import process_memory_kib, reset_process_peak

warnings.filterwarnings("ignore")


TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


LAYER_SHAPES = [(576, 576), (1536, 576), (4096, 4096), (11008, 4096)]


LAYER_METHODS = [
    "base",
    "smoa_k2",
    "smoa_k2_blockwise",
    "smoa_k4",
    "smoa_k8",
    "lora_r16",
    "hira_r16",
    "dora_r16",
    "smoa_reference",
    "authors_k2",
]


MODEL_METHODS = ["smoa_k2", "lora_r16", "hira_r16", "dora_r16", "authors_k2", "smoa_k2_dropout", "lora_r16_dropout"]


#: one Llama-2-7B decoder layer's targets (d_out, d_in) and the model's decoder layer count
QUANTIZED_METHODS = ["smoa_k2", "lora_r16", "hira_r16"]


LLAMA2_7B_TARGETS = {
    "q_proj": (4096, 4096),
    "k_proj": (4096, 4096),
    "v_proj": (4096, 4096),
    "up_proj": (11008, 4096),
    "down_proj": (4096, 11008),
}


#: the paper's training dropout; "<method>_dropout" runs a method with it (SMoA then takes its blockwise kernel)
LLAMA2_7B_LAYERS = 32


PAPER_DROPOUT = 0.05


def peft_wrap(module: nn.Module, method: str, targets: list[str]) -> nn.Module:
    """Wrap ``module`` with one of the benchmarked methods (trainable parameters matched: SMoA r=32,K=2 ~ LoRA r=16)."""
    import peft

    import smoa

    dropout = 0.0
    if method.endswith("_dropout"):
        method, dropout = method.removesuffix("_dropout"), PAPER_DROPOUT
    if method == "bare":
        return module
    if method == "base":
        for p in module.parameters():
            p.requires_grad_(False)
        return module
    if method.startswith("smoa") or method.startswith("authors"):
        k = int(method.split("_k")[1][0]) if "_k" in method else 2
        model = peft.get_peft_model(
            module, smoa.SMoAConfig(r=32, num_blocks=k, lora_alpha=32, lora_dropout=dropout, target_modules=targets)
        )
        kernel = "blockwise" if method.endswith("blockwise") else "reference" if method.endswith("reference") else None
        for layer in smoa.smoa_layers(model).values():
            if kernel:
                layer.kernel = kernel
            if method.startswith("authors"):
                install_authors_forward(layer)
        return model
    if method == "lora_r16":
        config = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=targets)
        return peft.get_peft_model(module, config)
    if method == "dora_r16":
        return peft.get_peft_model(module, peft.LoraConfig(r=16, lora_alpha=32, target_modules=targets, use_dora=True))
    if method == "hira_r16":
        return peft.get_peft_model(module, peft.HiraConfig(r=16, target_modules=targets))
    raise ValueError(f"unknown method {method!r}")


def install_authors_forward(layer: nn.Module) -> None:
    """Re-create the authors' approach on an SMoA layer: float32 anchor copies kept as buffers, and every forward
    builds a dense zero ``(d_out, d_in)`` matrix, scatters the blocks into it and multiplies densely."""
    from smoa.adapter.functional import block_anchor, block_indices

    weight = layer.effective_weight().detach()
    k = len(layer.smoa_A["default"])
    rows_k = block_indices(layer.smoa_row_order["default"], k)
    cols_k = block_indices(layer.smoa_col_order["default"], k)
    layer._authors_blocks = [
        (rows, cols, block_anchor(weight, rows, cols).to(torch.float32).clone())
        for rows, cols in zip(rows_k, cols_k, strict=True)
    ]

    def forward(self, x, *args, **kwargs):
        result = self.base_layer(x)
        a, b = self.smoa_A["default"], self.smoa_B["default"]
        # the dense matrix in the anchors' float32 (a bf16 / fp16 run casts it for the product, as autocast would)
        delta = torch.zeros(self.out_features, self.in_features, dtype=torch.float32, device=x.device)
        for (rows, cols, anchor), a_k, b_k in zip(self._authors_blocks, a, b, strict=True):
            delta[rows[:, None], cols[None, :]] = ((b_k @ a_k) * anchor).to(torch.float32)
        weight = (delta * self.scaling["default"]).to(x.dtype)
        return result + nn.functional.linear(self.smoa_dropout["default"](x), weight)

    layer.forward = types.MethodType(forward, layer)


def make_layer(d_out: int, d_in: int, method: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    linear = nn.Linear(d_in, d_out, bias=False)
    nn.init.normal_(linear.weight, std=0.02)
    return peft_wrap(nn.Sequential(linear), method, ["0"])


def smollm2_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )


def make_model(method: str, seed: int = 0) -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(smollm2_config())
    return peft_wrap(model, method, TARGETS)


def make_nf4_model(method: str, seed: int = 0) -> nn.Module:
    """The SmolLM2-135M architecture with every decoder linear layer in nf4 (what ``BitsAndBytesConfig(
    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)`` loads; the LM head and
    embeddings stay float32), wrapped with ``method``."""
    import bitsandbytes as bnb
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(smollm2_config())
    device = model.lm_head.weight.device
    for name, linear in list(model.model.named_modules()):
        if type(linear) is not nn.Linear:
            continue
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=torch.float32,
            quant_type="nf4",
        )
        quantized.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
        parent, _, child = name.rpartition(".")
        model.model.get_submodule(parent).register_module(child, quantized.to(device))  # quantised on .to(device)
    model.is_loaded_in_4bit = True  # as transformers marks it: PEFT's LoRA / HiRA pick their 4-bit layers by it
    return peft_wrap(model, method, TARGETS)


def layer_step(model: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        model(x).backward(upstream)

    return step


def train_step(model: nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()

    return step


def interleaved_medians(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_rss_of(kind: str, method: str, *args: str) -> float:
    """Peak extra resident memory (MiB) of one step, measured in a fresh process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(torch.get_num_threads()))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("run.py")), "_memory", kind, method, *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def memory_child(kind: str, method: str, *args: str) -> None:
    """Peak memory of a method over the bare base: its resident state plus the high-water mark of one step."""
    if kind == "layer":
        d_out, d_in, tokens = int(args[0]), int(args[1]), int(args[2])
        x = torch.randn(tokens, d_in, requires_grad=True)
        upstream = torch.randn(tokens, d_out)
        base = make_layer(d_out, d_in, "bare")
        base_bytes = state_bytes(base)
        model = peft_wrap(base, method, ["0"])
        step = layer_step(model, x, upstream)
    else:
        batch, seq = int(args[0]), int(args[1])
        tokens = torch.randint(0, 49152, (batch, seq))
        base = make_nf4_model("bare") if kind == "nf4" else make_model("bare")
        base_bytes = state_bytes(base)
        model = peft_wrap(base, method, TARGETS)
        step = train_step(model, tokens)
    # The method's resident state is counted tensor by tensor (the RSS after wrapping also holds the LAPACK
    # library's cached SVD workspace, which is not the method's); the step's memory is the RSS high-water mark.
    resident = state_bytes(model) - base_bytes
    before = _rss_kib("VmRSS")
    step()  # warm-up; optimizer moments and gradients created here count towards the step below
    if not reset_process_peak():  # VmHWM back to the current RSS (Linux >= 4.0)
        raise RuntimeError("cannot reset VmHWM through /proc/self/clear_refs; the memory section needs Linux >= 4.0")
    step()
    step_mib = (_rss_kib("VmHWM") - before) / 1024
    print(json.dumps({"peak_mib": resident / 2**20 + step_mib, "resident_mib": resident / 2**20}))


def state_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor a model holds: parameters, buffers and tensors kept as module attributes."""
    seen: dict[int, int] = {}
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for value in vars(module).values():
            if isinstance(value, torch.Tensor):
                tensors.append(value)
            elif isinstance(value, list):  # the authors' anchors: a list of (rows, cols, anchor)
                tensors += [
                    t
                    for item in value
                    for t in (item if isinstance(item, tuple) else (item,))
                    if isinstance(t, torch.Tensor)
                ]
        for t in tensors:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _rss_kib(field: str) -> int:
    value = process_memory_kib(field)
    if value is None:
        raise RuntimeError(f"{field} not found in /proc/self/status; the memory section needs Linux")
    return value
