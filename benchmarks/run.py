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
import sys

import torch
from bench_data import bench_data
from bench_inference import bench_inference
from bench_init import bench_init, bench_init_7b
from bench_layer import bench_layers
from bench_training import bench_training, profile_nf4_dequantisation
from harness import LAYER_SHAPES, MODEL_METHODS, QUANTIZED_METHODS, memory_child
from report import write_report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_memory":
        memory_child(*argv[1:])
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
        results["quantized_profile"] = profile_nf4_dequantisation(args.batch, args.seq, args.repeats)
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
