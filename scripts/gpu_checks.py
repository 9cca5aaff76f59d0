"""The parts of scripts/gpu_checks.sh written in Python: benchmarks on one device in bf16, a tiny training setup, and
a pytest plugin that makes the tests build their tensors on that device.

    python scripts/gpu_checks.py bench layer|model|nf4 OUT.json   # SMoA (fused, blockwise) vs LoRA, HiRA, the authors'
    python scripts/gpu_checks.py tiny-run DIR                     # tiny model + data + recipe for a ZeRO-3 step
    python -m pytest -p gpu_checks tests/adapter                  # (scripts/ on PYTHONPATH) tensors on SMOA_DEVICE

The device is ``cuda`` when one is visible, else the CPU; ``SMOA_GPU_CHECK_TINY=1`` shrinks every shape so the
whole script runs on a CPU in a minute or two (to check the script itself, not to measure).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
TINY = os.environ.get("SMOA_GPU_CHECK_TINY", "0") == "1"
DEVICE = torch.device(os.environ.get("SMOA_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
DTYPE = torch.bfloat16
#: layer shapes: SmolLM2's q and up, Llama-2-7B's q and up (tiny: two small ones)
LAYER_SHAPES = [(64, 64), (96, 64)] if TINY else [(576, 576), (1536, 576), (4096, 4096), (11008, 4096)]
LAYER_METHODS = ["base", "smoa_k2", "smoa_k2_blockwise", "lora_r16", "hira_r16", "authors_k2"]
MODEL_METHODS = ["smoa_k2", "smoa_k2_blockwise", "lora_r16", "hira_r16", "authors_k2"]
NF4_METHODS = ["smoa_k2", "lora_r16", "hira_r16"]
DROPOUTS = ["", "_dropout"]  # none, and the paper's 0.05 (SMoA then takes its blockwise kernel)


def benchmarks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run as bench  # benchmarks/run.py: the method builders and the interleaved timing

    return bench


def synchronized(step: Callable[[], None]) -> Callable[[], None]:
    def timed() -> None:
        step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    return timed


def peak_mib(step: Callable[[], None]) -> float | None:
    """Extra device memory of one step over what is allocated before it (CUDA only)."""
    if DEVICE.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def model_config():
    bench = benchmarks()
    if not TINY:
        return bench.smollm2_config()
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )


def bench_layers(repeats: int) -> list[dict]:
    bench = benchmarks()
    tokens = 64 if TINY else 2048
    rows = []
    for d_out, d_in in LAYER_SHAPES:
        x = torch.randn(tokens, d_in, device=DEVICE, dtype=DTYPE, requires_grad=True)
        upstream = torch.randn(tokens, d_out, device=DEVICE, dtype=DTYPE)
        steps = {}
        for method in [m + d for d in DROPOUTS for m in LAYER_METHODS if not (m == "base" and d)]:
            torch.manual_seed(0)
            linear = nn.Linear(d_in, d_out, bias=False, device=DEVICE, dtype=DTYPE)
            nn.init.normal_(linear.weight, std=0.02)
            model = bench.peft_wrap(nn.Sequential(linear), method, ["0"])
            steps[method] = synchronized(bench.layer_step(model, x, upstream))
        medians = bench.interleaved_medians(steps, repeats)
        for method, seconds in medians.items():
            shape, ratio = f"{d_out}x{d_in}", seconds / medians["base"]
            row = {"shape": shape, "method": method, "ms": seconds * 1e3, "vs_base": ratio}
            row["peak_mib"] = peak_mib(steps[method])
            rows.append(row)
            print(f"layer {shape:>10s} {method:26s} {seconds * 1e3:8.2f} ms  {ratio:5.2f}× base", flush=True)
        del steps
    return rows


def build_model(method: str) -> nn.Module:
    from transformers import LlamaForCausalLM

    bench = benchmarks()
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config()).to(DEVICE, DTYPE)
    return bench.peft_wrap(model, method, bench.TARGETS)


def build_nf4_model(method: str) -> nn.Module:
    bench = benchmarks()
    if TINY:
        bench.smollm2_config = model_config  # make_nf4_model builds the benchmark's architecture
    with torch.device(DEVICE):  # built on the device: bitsandbytes quantises there
        return bench.make_nf4_model(method)


def bench_training(build: Callable[[str], nn.Module], methods: list[str], repeats: int) -> list[dict]:
    bench = benchmarks()
    batch, seq = (2, 16) if TINY else (8, 256)
    vocab = model_config().vocab_size
    tokens = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    rows = []
    steps = {m: synchronized(bench.train_step(build(m), tokens)) for m in methods}
    medians = bench.interleaved_medians(steps, repeats)
    reference = {m: "lora_r16_dropout" if m.endswith("_dropout") else "lora_r16" for m in methods}
    for method, seconds in medians.items():
        row = {"method": method, "s_per_step": seconds, "vs_lora": seconds / medians[reference[method]]}
        row["peak_mib"] = peak_mib(steps[method])
        rows.append(row)
        print(f"train {method:26s} {seconds * 1e3:8.1f} ms/step  {row['vs_lora']:5.2f}× LoRA", flush=True)
    return rows


def tiny_run(directory: str) -> None:
    """A tiny Llama folder, a training file and a 2-step recipe under ``directory`` (the ZeRO-3 check's inputs)."""
    import yaml

    sys.path.insert(0, str(ROOT))
    from tests.training.conftest import commonsense_rows, tiny_recipe_values, write_tiny_model

    root = Path(directory)
    model = write_tiny_model(root / "model")
    data = root / "train.json"
    data.write_text(json.dumps(commonsense_rows(24, seed=3)))
    values = tiny_recipe_values(model, data, root / "run", max_steps=2, eval_steps=2, save_steps=2)
    values.update(deepspeed=str(ROOT / "configs" / "deepspeed" / "zero3.json"), batch_size=2, micro_batch_size=2)
    if DEVICE.type == "cuda":
        values["precision"] = "bf16"
    (root / "recipe.yaml").write_text(yaml.safe_dump(values))
    print(root / "recipe.yaml")


def main(argv: list[str]) -> int:
    if argv[:1] == ["tiny-run"]:
        tiny_run(argv[1])
        return 0
    if argv[:1] != ["bench"] or len(argv) != 3 or argv[1] not in ("layer", "model", "nf4"):
        print(__doc__, file=sys.stderr)
        return 2
    what, out = argv[1], Path(argv[2])
    repeats = 1 if TINY else 10
    torch.backends.cuda.matmul.allow_tf32 = False
    started = time.perf_counter()
    if what == "layer":
        rows = bench_layers(repeats)
    elif what == "model":
        methods = [m + d for d in DROPOUTS for m in MODEL_METHODS]
        rows = bench_training(build_model, methods, repeats)
    else:
        rows = bench_training(build_nf4_model, NF4_METHODS, repeats)
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    result = {
        "section": what,
        "device": device,
        "dtype": "nf4 decoder linears, float32 compute" if what == "nf4" else "bfloat16 base, float32 adapters",
        "tiny": TINY,
        "repeats": repeats,
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=1))
    return 0


# ------------------------------------------------------------------------------------------------ pytest plugin
def pytest_sessionstart(session) -> None:
    """With ``-p gpu_checks``: tensors and modules the tests create without naming a device go to ``SMOA_DEVICE``."""
    torch.set_default_device(DEVICE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
