"""Spectral initialisation time, SmolLM2 and one Llama-2-7B decoder layer (``run.py init`` / ``init7b``)."""

from __future__ import annotations

import os
import statistics
import time

import torch
from harness import LLAMA2_7B_LAYERS, LLAMA2_7B_TARGETS, TARGETS, smollm2_config
from torch import nn


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
