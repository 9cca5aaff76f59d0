"""Layer forward + backward of every method at SmolLM2 and Llama-2-7B shapes (``run.py layer``)."""

from __future__ import annotations

import torch
from harness import LAYER_METHODS, interleaved_medians, layer_step, make_layer, peak_rss_of


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
