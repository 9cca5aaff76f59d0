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
