"""benchmarks/RESULTS.md from the measured results: tables, ratios and their reading."""

from __future__ import annotations

import os
from collections.abc import Callable

from harness import LAYER_METHODS, LLAMA2_7B_TARGETS, PAPER_DROPOUT

from smoa._io import write_text_atomic
from smoa.analysis.report import markdown_table


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
        profile = results.get("quantized_profile")
        if profile:
            lines += [
                "",
                f"Where SMoA's nf4 step goes (median step of {results['repeats']}): "
                f"{profile['dequantise_seconds']:.2f} s of {profile['step_seconds']:.2f} s "
                f"({100 * profile['dequantise_share']:.0f} %) in block dequantisation, {profile['calls_per_step']} "
                f"calls over {profile['layers']} layers (forward and backward). Caching the gathered anchors for "
                f"the backward would save at most half of that time and hold {profile['cache_mib_fp32']:.0f} MiB "
                "of float32 anchors at once (every adapted layer's blocks, from its forward until the backward "
                "reaches it).",
            ]
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
