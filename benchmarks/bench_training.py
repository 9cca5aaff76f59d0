"""Training steps of the SmolLM2-135M architecture, float or nf4 (``run.py model`` / ``run.py quantized``)."""

from __future__ import annotations

import torch
from harness import interleaved_medians, make_model, make_nf4_model, peak_rss_of, train_step


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


def profile_nf4_dequantisation(batch: int, seq: int, repeats: int) -> dict:
    """Where SMoA's nf4 step goes: the seconds spent in its block dequantisation (``dequantize_block``, called in
    forward and again in backward) per step, the number of calls, and the bytes a per-step cache of the gathered
    anchors would hold at once (every adapted layer's ``Σ_k |R_k|·|C_k|`` floats: forward keeps them all until the
    backward reaches each layer), so the time a cache could save is set against the memory it would cost."""
    import time

    from smoa.adapter.bnb import QuantizedLinear

    model = make_nf4_model("smoa_k2")
    tokens = torch.randint(0, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))
    step = train_step(model, tokens)
    spent = {"seconds": 0.0, "calls": 0}
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    kind = type(layers[0])  # Linear4bit: its own dequantize_block
    original = kind.dequantize_block

    def timed(self, param, rows, cols):
        started = time.perf_counter()
        out = original(self, param, rows, cols)
        spent["seconds"] += time.perf_counter() - started
        spent["calls"] += 1
        return out

    step()  # warm-up
    steps, dequant, calls = [], [], []
    kind.dequantize_block = timed
    try:
        for _ in range(repeats):
            spent.update(seconds=0.0, calls=0)
            started = time.perf_counter()
            step()
            steps.append(time.perf_counter() - started)
            dequant.append(spent["seconds"])
            calls.append(spent["calls"])
    finally:
        kind.dequantize_block = original
    cache_floats = sum(m.out_features * m.in_features // len(m.smoa_A["default"]) for m in layers)
    median = sorted(range(repeats), key=lambda i: steps[i])[repeats // 2]
    result = {
        "step_seconds": steps[median],
        "dequantise_seconds": dequant[median],
        "dequantise_share": dequant[median] / steps[median],
        "calls_per_step": calls[median],
        "layers": len(layers),
        "cache_mib_fp32": cache_floats * 4 / 2**20,
    }
    print(f"  nf4 profile: {result}")
    return result
