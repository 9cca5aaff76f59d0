"""Prefill throughput unmerged and merged against the base (``run.py inference``)."""

from __future__ import annotations

import torch
from harness import interleaved_medians, make_model
from torch import nn


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
