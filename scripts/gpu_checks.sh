#!/usr/bin/env bash
# The checks that need a GPU, in one run (≤ 10 minutes on one H100/H200), results under $OUT:
#   1. the adapter and kernel tests with their tensors on CUDA          → $OUT/tests-adapter.txt
#   2. layer and model benchmarks in bf16: SMoA fused and blockwise vs LoRA, HiRA and the authors' approach,
#      dropout 0 and 0.05                                               → $OUT/bench-layer.json, bench-model.json
#   3. a training step on an nf4 base (SMoA vs LoRA vs HiRA)            → $OUT/bench-nf4.json
#   4. a 1-GPU DeepSpeed ZeRO-3 step through `smoa train`               → $OUT/zero3.txt, $OUT/zero3-run/
# Each check runs even if an earlier one failed; $OUT/summary.txt lists them with their exit codes and times, and
# the script exits non-zero if any failed.
#
#   OUT=results/gpu bash scripts/gpu_checks.sh
#   SMOA_GPU_CHECK_TINY=1 OUT=/tmp/gpu-dry bash scripts/gpu_checks.sh   # no GPU: tiny shapes on the CPU, to check
#                                                                     # the script itself (a minute or two)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
TINY="${SMOA_GPU_CHECK_TINY:-0}"
export PYTHONPATH="$PWD/src:$PWD/scripts:$PWD${PYTHONPATH:+:$PYTHONPATH}" SMOA_PROGRESS=0 TOKENIZERS_PARALLELISM=false
if [ "$TINY" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_checks: no CUDA device visible; set SMOA_GPU_CHECK_TINY=1 to check the script on a CPU" >&2
  exit 2
fi
: > "$OUT/summary.txt"
failed=0
check() {  # check NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.txt, record the exit code and seconds
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  [ "$rc" -ne 0 ] && failed=1
  printf '%-14s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$OUT/summary.txt"
}

"$PY" - <<'PY' > "$OUT/device.txt" 2>&1
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device (tiny check on the CPU)")
for name in ("smoa", "peft", "transformers", "deepspeed", "bitsandbytes"):
    print(name, "installed" if importlib.util.find_spec(name) else "MISSING (bash scripts/setup.sh)")
PY

# time limits sum to 9.5 minutes; expected on one H100/H200: about 5
if [ "$TINY" = 1 ]; then
  tests=(tests/adapter/test_kernels.py -x -k "fused_path or blockwise_branch or half_precision")
else
  tests=(tests/adapter -rf)  # every failure listed (a test that builds a CPU generator can fail for that alone)
fi
check tests-adapter 180 "$PY" -m pytest -p gpu_checks -q --no-header -p no:cacheprovider "${tests[@]}"
check bench-layer 120 "$PY" scripts/gpu_checks.py bench layer "$OUT/bench-layer.json"
check bench-model 150 "$PY" scripts/gpu_checks.py bench model "$OUT/bench-model.json"
check bench-nf4 60 "$PY" scripts/gpu_checks.py bench nf4 "$OUT/bench-nf4.json"

# ZeRO-3 on one process, launched as for N: the base is partitioned at load, injection gathers each weight
work="$(mktemp -d)"
recipe="$("$PY" scripts/gpu_checks.py tiny-run "$work" | tail -1)"
check zero3 60 "$PY" -m torch.distributed.run --nproc_per_node 1 --master_port "$((29500 + RANDOM % 1000))" \
  -m smoa.cli.main train --recipe "$recipe" --set "output_dir=$OUT/zero3-run" --overwrite
if [ -f "$OUT/zero3-run/adapter/adapter_model.safetensors" ]; then
  echo "zero3: adapter written" >> "$OUT/zero3.txt"
else
  echo "zero3: no adapter written" >> "$OUT/zero3.txt"; failed=1
fi
rm -rf "$work" "$OUT"/zero3-run/checkpoint-*  # the adapter and results stay; DeepSpeed's optimizer shards do not
exit "$failed"
