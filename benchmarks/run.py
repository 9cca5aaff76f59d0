"""Speed and memory of SMoA against the frozen base, PEFT's LoRA / HiRA / DoRA and the authors' approach.

Every ratio is measured side by side in one run: the methods are interleaved within each repeat, and the median of
the repeats (after warm-up) is reported. Peak memory is the high-water mark of the resident set of a fresh process
that builds the base, wraps it with one method and runs two steps (large allocations forced onto mmap so freed
memory leaves the process), minus the resident set of the bare base: the method's resident state plus its step peak.

    python benchmarks/run.py layer      # layer fwd+bwd, tokens=2048, SmolLM2 and Llama-2-7B shapes
    python benchmarks/run.py model      # training steps/s and peak memory, SmolLM2-135M architecture
    python benchmarks/run.py inference  # unmerged / merged vs base, tokens/s
    python benchmarks/run.py init       # spectral init time for all targeted layers
    python benchmarks/run.py init7b --repeats 1  # spectral init of one Llama-2-7B decoder layer (× 32: the model)
    python benchmarks/run.py quantized  # QLoRA-style training step on an nf4 base: SMoA vs LoRA vs HiRA
    python benchmarks/run.py all --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable

import torch
from torch import nn

from smoa._io import write_text_atomic
from smoa._memory import process_memory_kib, reset_process_peak
from smoa.analysis.report import markdown_table

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
QUANTIZED_METHODS = ["smoa_k2", "lora_r16", "hira_r16"]
#: one Llama-2-7B decoder layer's targets (d_out, d_in) and the model's decoder layer count
LLAMA2_7B_TARGETS = {
    "q_proj": (4096, 4096),
    "k_proj": (4096, 4096),
    "v_proj": (4096, 4096),
    "up_proj": (11008, 4096),
    "down_proj": (4096, 11008),
}
LLAMA2_7B_LAYERS = 32
#: the paper's training dropout; "<method>_dropout" runs a method with it (SMoA then takes its blockwise kernel)
PAPER_DROPOUT = 0.05


# --------------------------------------------------------------------------------------------------- building
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


# ------------------------------------------------------------------------------------------------- stepping
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
        [sys.executable, __file__, "_memory", kind, method, *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _memory_child(kind: str, method: str, *args: str) -> None:
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


# --------------------------------------------------------------------------------------------------- sections
def bench_layers(tokens: int, repeats: int, shapes: list[tuple[int, int]], memory: bool) -> list[dict]:
    rows = []
    for d_out, d_in in shapes:
        print(f"layer {d_out}x{d_in}, tokens={tokens}", flush=True)
        x = torch.randn(tokens, d_in, requires_grad=True)
        upstream = torch.randn(tokens, d_out)
        steps = {m: layer_step(make_layer(d_out, d_in, m), x, upstream) for m in LAYER_METHODS}
        medians = interleaved_medians(steps, repeats)
        for method in LAYER_METHODS:
            row = {"shape": f"{d_out}x{d_in}", "method": method, "seconds": medians[method]}
            if memory:
                row["peak_mib"] = peak_rss_of("layer", method, str(d_out), str(d_in), str(tokens))
            rows.append(row)
            print(f"  {method:18s} {medians[method] * 1e3:9.1f} ms  {row.get('peak_mib', float('nan')):8.1f} MiB")
        del steps
    return rows


def bench_training(kind: str, methods: list[str], batch: int, seq: int, repeats: int, memory: bool) -> list[dict]:
    """Training steps (forward, backward, AdamW) of the SmolLM2-135M architecture, float (``kind="model"``) or with
    nf4 decoder linears (``kind="nf4"``: the QLoRA setting, where 7B users train), one row per method."""
    build = make_nf4_model if kind == "nf4" else make_model
    print(f"{kind}: SmolLM2-135M architecture, batch={batch}, seq={seq}", flush=True)
    tokens = torch.randint(0, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))
    steps = {m: train_step(build(m), tokens) for m in methods}
    medians = interleaved_medians(steps, repeats)
    rows = []
    for method in methods:
        row = {"method": method, "seconds": medians[method], "steps_per_s": 1.0 / medians[method]}
        if memory:
            row["peak_mib"] = peak_rss_of(kind, method, str(batch), str(seq))
        rows.append(row)
        print(f"  {method:18s} {medians[method]:7.2f} s/step  {row.get('peak_mib', float('nan')):8.1f} MiB")
    return rows


def bench_inference(batch: int, seq: int, repeats: int) -> list[dict]:
    print(f"inference (prefill) SmolLM2-135M architecture, batch={batch}, seq={seq}", flush=True)
    import smoa

    tokens = torch.randint(0, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))
    base = make_model("base").eval()
    unmerged = make_model("smoa_k2").eval()
    for layer in smoa.smoa_layers(unmerged).values():  # a trained-looking adapter (B ≠ 0)
        for b_k in layer.smoa_B["default"]:
            nn.init.normal_(b_k, std=0.01)
    unmerged_blockwise = make_model("smoa_k2_blockwise").eval()
    merged = make_model("smoa_k2").merge_and_unload().eval()

    def forward(model):
        def step():
            with torch.no_grad():
                model(input_ids=tokens)

        return step

    models = {"base": base, "smoa_unmerged": unmerged, "smoa_unmerged_blockwise": unmerged_blockwise}
    models["smoa_merged"] = merged
    medians = interleaved_medians({name: forward(m) for name, m in models.items()}, repeats)
    rows = []
    for name in models:
        rows.append({"method": name, "seconds": medians[name], "tokens_per_s": batch * seq / medians[name]})
        print(f"  {name:24s} {batch * seq / medians[name]:9.0f} tokens/s")
    return rows


def bench_init(repeats: int) -> dict:
    import peft
    from transformers import LlamaForCausalLM

    import smoa

    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_config())
    times = []
    for _ in range(repeats):
        config = smoa.SMoAConfig(r=32, num_blocks=2, lora_alpha=32, target_modules=TARGETS)
        start = time.perf_counter()
        wrapped = peft.get_peft_model(model, config)
        times.append(time.perf_counter() - start)
        model = wrapped.unload()
    n_layers = 30 * len(TARGETS)
    return {"layers": n_layers, "seconds": statistics.median(times)}


def bench_init_7b(repeats: int) -> dict:
    """SMoA's injection (finiteness check, fingerprint, float32 SVD, block orders) of each target of one
    Llama-2-7B-shaped decoder layer, random float32 weights, one module at a time as under ZeRO-3 (which gathers
    one weight, injects it, and releases it). The whole model is 32 such layers: 32 × the layer's sum."""
    import peft

    import smoa

    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    seconds = {}
    for name, (d_out, d_in) in LLAMA2_7B_TARGETS.items():
        holder = nn.Module()
        setattr(holder, name, nn.Linear(d_in, d_out, bias=False))
        times = []
        for _ in range(repeats):
            config = smoa.SMoAConfig(r=32, num_blocks=2, lora_alpha=32, target_modules=[name])
            start = time.perf_counter()
            wrapped = peft.get_peft_model(holder, config)
            times.append(time.perf_counter() - start)
            holder = wrapped.unload()
        seconds[name] = statistics.median(times)
        print(f"init7b: {name} {d_out}x{d_in}: {seconds[name]:.1f} s")
    layer = sum(seconds.values())
    return {
        "seconds": seconds,
        "layer_seconds": layer,
        "model_seconds": layer * LLAMA2_7B_LAYERS,
        "layers": LLAMA2_7B_LAYERS,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "threads": torch.get_num_threads(),
    }


def bench_data(repeats: int, steps: int = 6) -> dict:
    """Real training steps on the packaged SmolLM2 and commonsense data (an 800-example slice, batch 8): the LM head
    at every position vs at labelled positions only, and random vs length-grouped batches; SMoA and LoRA at the same
    budget. ``steps`` batches spread evenly over the epoch are timed; the padding counts cover the whole epoch."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from smoa.lm_head import causal_lm_loss
    from smoa.tasks.prompts import collate_for_training
    from smoa.training.data import load_training_records, tokenize_records
    from smoa.training.recipe import load_recipe
    from smoa.training.trainer import build_model

    batch_size = 8
    recipe = load_recipe(
        None, train_limit=800, val_size=120, budget="matched", seed=0, method_args={"lora_dropout": 0.0}
    )
    models = {}
    for method in ("smoa", "lora"):
        models[method], tokenizer, _ = build_model(load_recipe(None, **{**recipe.to_dict(), "method": method}))
    train, _ = load_training_records(recipe)
    data = tokenize_records(train, tokenizer, recipe)
    lengths = [len(d["input_ids"]) for d in data]
    orders = {
        "random": torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist(),
        "grouped": list(LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(0))),
    }
    pad = tokenizer.pad_token_id
    batches, padding = {}, {}
    for name, order in orders.items():
        all_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        padding[name] = {
            "padded_tokens": sum(max(lengths[i] for i in b) * len(b) for b in all_batches),
            "real_tokens": sum(lengths),
        }
        picked = [all_batches[round(k * (len(all_batches) - 1) / (steps - 1))] for k in range(steps)]
        batches[name] = [collate_for_training([data[i] for i in b], pad) for b in picked]

    def runner(model, head: str, order: str):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        model.train()

        def step() -> None:
            for b in batches[order]:
                optimizer.zero_grad(set_to_none=True)
                if head == "full":
                    loss = model(**b).loss
                else:
                    loss = causal_lm_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
                loss.backward()
                optimizer.step()

        return step

    configs = [("full", "random"), ("labelled", "random"), ("labelled", "grouped")]
    runs = {f"{m}/{h}/{o}": runner(models[m], h, o) for m in models for h, o in configs}
    medians = interleaved_medians(runs, repeats)
    with torch.no_grad():
        b = batches["random"][0]
        model = models["smoa"].eval()
        loss_gap = abs(
            model(**b).loss.item() - causal_lm_loss(model, b["input_ids"], b["attention_mask"], b["labels"]).item()
        )
    rows = []
    for name, seconds in medians.items():
        method, head, order = name.split("/")
        rows.append(
            {
                "method": method,
                "head": head,
                "order": order,
                "seconds_per_step": seconds / steps,
                "steps_per_s": steps / seconds,
            }
        )
        print(f"  {name:24s} {seconds / steps:6.2f} s/step")
    return {
        "rows": rows,
        "padding": padding,
        "steps": steps,
        "batch": batch_size,
        "loss_gap": loss_gap,
        "repeats": repeats,
    }


# ---------------------------------------------------------------------------------------------------- report
def pick(rows: list[dict], key: str, method: str, **match) -> float:
    return next(r[key] for r in rows if r["method"] == method and all(r.get(k) == v for k, v in match.items()))


def ratio(rows: list[dict], key: str, num: str, den: str, **match) -> float:
    return pick(rows, key, num, **match) / pick(rows, key, den, **match)


READING = "## Reading the numbers"


def step_table(rows: list[dict], reference: Callable[[str], str]) -> str:
    """Training-step rows as a markdown table, time and peak memory relative to each row's ``reference(method)``."""
    table = []
    for r in rows:
        lora = reference(r["method"])
        rel_t = ratio(rows, "seconds", r["method"], lora)
        rel_m = ratio(rows, "peak_mib", r["method"], lora) if "peak_mib" in r else float("nan")
        table.append(
            [r["method"], f"{r['seconds']:.2f}", f"{r['steps_per_s']:.3f}", f"{rel_t:.3f}",
             f"{r.get('peak_mib', float('nan')):.0f}", f"{rel_m:.3f}"]
        )  # fmt: skip
    return markdown_table(["method", "s/step", "steps/s", "vs LoRA r=16", "peak MiB", "vs LoRA"], table)


def write_report(results: dict, path: str, command: str) -> None:
    lines = ["# Benchmark results", "", f"Command: `{command}`", ""]
    for section, other in results.get("commands", {}).items():
        lines.append(f"Section `{section}` re-measured later with: `{other}`")
    machine = results["machine"]
    lines += ["", f"Machine: {machine}", ""]
    if "layer" in results:
        rows = results["layer"]
        lines += [f"## Layer forward+backward (tokens = {results['tokens']}, fp32, median of {results['repeats']})", ""]
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        header = ["method", *(f"{s} ms" for s in shapes), *(f"{s} / base" for s in shapes)]
        table = []
        for method in LAYER_METHODS:
            ms = [next(r["seconds"] for r in rows if r["shape"] == s and r["method"] == method) * 1e3 for s in shapes]
            rel = [ratio(rows, "seconds", method, "base", shape=s) for s in shapes]
            table.append([method, *(f"{v:.1f}" for v in ms), *(f"{v:.2f}" for v in rel)])
        lines.append(markdown_table(header, table))
        if "peak_mib" in rows[0]:
            lines += ["", "Peak extra memory of one step (MiB):", ""]
            table = []
            for method in LAYER_METHODS:
                mib = [next(r["peak_mib"] for r in rows if r["shape"] == s and r["method"] == method) for s in shapes]
                table.append([method, *(f"{v:.1f}" for v in mib)])
            lines.append(markdown_table(["method", *shapes], table))
        big = "4096x4096"
        if big in shapes:
            lines += ["", f"Targets at {big}:", ""]
            checks = [
                ("SMoA(r=32,K=2) / frozen base", ratio(rows, "seconds", "smoa_k2", "base", shape=big), "<= 1.35"),
                ("SMoA / LoRA r=16", ratio(rows, "seconds", "smoa_k2", "lora_r16", shape=big), "<= 1.3"),
                ("SMoA / HiRA r=16", ratio(rows, "seconds", "smoa_k2", "hira_r16", shape=big), "< 1"),
                ("SMoA / authors' approach", ratio(rows, "seconds", "smoa_k2", "authors_k2", shape=big), "<= 0.6"),
            ]
            if "peak_mib" in rows[0]:
                diff = pick(rows, "peak_mib", "authors_k2", shape=big) - pick(rows, "peak_mib", "smoa_k2", shape=big)
                checks.append(("authors' peak − SMoA peak (MiB; one fp32 4096² = 64 MiB)", diff, ">= 64"))
            for name, value, target in checks:
                lines.append(f"- {name}: **{value:.2f}** (target {target})")
    if "model" in results:
        rows = results["model"]
        lines += [
            "",
            f"## Model training step (SmolLM2-135M architecture, batch {results['batch']}, seq "
            f"{results['seq']}, targets q,k,v,up,down, AdamW, median of {results['repeats']})",
            "",
        ]
        lines += [
            f"Rows ending in `_dropout` use the paper's lora_dropout {PAPER_DROPOUT} and are compared with LoRA at the "
            "same dropout; the others use none.",
            "",
        ]
        lines.append(step_table(rows, lambda method: "lora_r16_dropout" if method.endswith("_dropout") else "lora_r16"))
    if "quantized" in results:
        rows = results["quantized"]
        lines += [
            "",
            f"## Training step on an nf4 base (QLoRA-style; SmolLM2-135M architecture, decoder linears in nf4, "
            f"compute float32, batch {results['batch']}, seq {results['seq']}, targets q,k,v,up,down, AdamW, median "
            f"of {results['repeats']})",
            "",
        ]
        lines += [
            "Peak MiB: the adapter's resident state plus one step's high-water mark over the bare nf4 base. SMoA "
            "dequantises its anchors block by block on every call (forward and backward) and keeps no float copy of "
            "the base; HiRA dequantises the whole weight per forward.",
            "",
        ]
        lines.append(step_table(rows, lambda method: "lora_r16"))
    if "inference" in results:
        rows = results["inference"]
        lines += ["", f"## Inference prefill (batch {results['batch']}, seq {results['seq']}, no grad)", ""]
        table = [
            [r["method"], f"{r['tokens_per_s']:.0f}", f"{ratio(rows, 'seconds', 'base', r['method']):.3f}"]
            for r in rows
        ]
        lines.append(markdown_table(["model", "tokens/s", "vs base"], table))
    if "init" in results:
        init = results["init"]
        lines += ["", "## Spectral initialisation", ""]
        lines.append(f"- SVD orders for all {init['layers']} targeted layers of SmolLM2-135M: {init['seconds']:.2f} s")
        if "model" in results:
            step = pick(results["model"], "seconds", "smoa_k2")
            for steps in (100, 1000):
                share = init["seconds"] / (init["seconds"] + steps * step)
                lines.append(f"- share of a {steps}-step run at {step:.2f} s/step: {100 * share:.2f}%")
    if "init7b" in results:
        init = results["init7b"]
        low, high = sorted(init["load_average"])
        lines += [
            "",
            f"## Spectral initialisation at 7B scale (one Llama-2-7B decoder layer, random float32 weights, "
            f"{init['threads']} thread{'s' if init['threads'] > 1 else ''}, 1-minute load average {low:.1f}–{high:.1f} "
            "while measuring)",
            "",
        ]
        table = [[name, "x".join(map(str, LLAMA2_7B_TARGETS[name])), f"{t:.1f}"] for name, t in init["seconds"].items()]
        wide = init["seconds"]["down_proj"] / init["seconds"]["up_proj"]
        table.append(["one decoder layer", "", f"{init['layer_seconds']:.1f}"])
        table.append([f"whole model (× {init['layers']})", "", f"{init['model_seconds']:.0f}"])
        lines.append(markdown_table(["module", "shape", "seconds"], table))
        lines += [
            "",
            f"- Llama-2-7B with q,k,v,up,down: about {init['model_seconds'] / 60:.0f} min of SVD before the first step "
            "on this CPU, paid once per run (the orders are saved with the adapter and never recomputed on load).",
            "- Under ZeRO-3 every process gathers one weight at a time and runs the same SVD: the wall time is the "
            "same as one process, the extra memory one whole weight (11008×4096 float32: 172 MiB) plus its SVD.",
            f"- down_proj (4096×11008, wider than tall) takes {wide:.1f}× up_proj (the transposed shape): LAPACK's "
            "thin SVD of a wide matrix is slower than of its transpose, which has the same singular vectors swapped.",
        ]
    if "data" in results:
        data = results["data"]
        rows = data["rows"]
        lines += [
            "",
            f"## Training on real batches (SmolLM2-135M weights, commonsense slice, batch {data['batch']}, "
            f"{data['steps']} batches spread over the epoch, median of {data['repeats']})",
            "",
        ]
        lines += [
            "Response-only loss: `labelled` applies the LM head only where a label is set "
            "(`smoa.lm_head.causal_lm_loss`), `full` at every position (transformers' loss); `grouped` batches "
            "examples of similar length (`group_by_length: true`).",
            "",
        ]
        table = []
        for r in rows:
            before = next(x for x in rows if x["method"] == r["method"] and x["head"] == "full")
            table.append(
                [r["method"], r["head"], r["order"], f"{r['seconds_per_step']:.2f}", f"{r['steps_per_s']:.3f}",
                 f"{before['seconds_per_step'] / r['seconds_per_step']:.2f}×"]
            )  # fmt: skip
        lines.append(markdown_table(["method", "head", "batches", "s/step", "steps/s", "vs full/random"], table))
        lines.append("")
        for order, count in data["padding"].items():
            share = 1 - count["real_tokens"] / count["padded_tokens"]
            lines.append(
                f"- {order} batches over the epoch: {count['padded_tokens']:,} tokens fed for "
                f"{count['real_tokens']:,} real ones ({100 * share:.1f} % padding)"
            )
        lines.append(f"- |loss(full head) − loss(labelled head)| on one batch: {data['loss_gap']:.2e}")
    if os.path.exists(path):  # the hand-written reading at the end of the report is kept
        with open(path) as f:
            previous = f.read()
        if READING in previous:
            lines += ["", READING + previous.split(READING, 1)[1].rstrip("\n")]
    write_text_atomic(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_memory":
        _memory_child(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "section", choices=["layer", "model", "quantized", "inference", "init", "init7b", "data", "all"]
    )
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per layer step (default 2048)")
    parser.add_argument("--shapes", default=",".join(f"{o}x{i}" for o, i in LAYER_SHAPES), help="d_outxd_in,...")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (median reported)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method peak-memory processes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", help="write a markdown report here (and JSON next to it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads",
        "tokens": args.tokens,
        "repeats": args.repeats,
        "batch": args.batch,
        "seq": args.seq,
    }
    memory = not args.no_memory
    if args.section in ("layer", "all"):
        results["layer"] = bench_layers(args.tokens, args.repeats, shapes, memory)
    if args.section in ("model", "all"):
        results["model"] = bench_training("model", MODEL_METHODS, args.batch, args.seq, args.repeats, memory)
    if args.section in ("quantized", "all"):
        results["quantized"] = bench_training("nf4", QUANTIZED_METHODS, args.batch, args.seq, args.repeats, memory)
    if args.section in ("inference", "all"):
        results["inference"] = bench_inference(args.batch, args.seq, args.repeats)
    if args.section in ("init", "all"):
        results["init"] = bench_init(args.repeats)
        print(f"init: {results['init']}")
    if args.section in ("init7b", "all"):
        results["init7b"] = bench_init_7b(min(args.repeats, 2))
    if args.section in ("data", "all"):
        results["data"] = bench_data(args.repeats)
    if args.output:
        command = "python benchmarks/run.py " + " ".join(argv)
        json_path = os.path.splitext(args.output)[0] + ".json"
        if args.section != "all" and os.path.exists(json_path):
            # one section re-measured: keep the others, each with the command that measured it
            with open(json_path) as f:
                kept = json.load(f)
            kept.setdefault("commands", {})
            kept["commands"][args.section] = command
            kept.update({k: v for k, v in results.items() if k == args.section or k not in kept})
            results, command = kept, kept.get("command", command)
        results.setdefault("command", command)
        write_report(results, args.output, command)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
