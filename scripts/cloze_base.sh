#!/usr/bin/env bash
# The packaged default model's zero-shot cloze scores (lm-eval's acc / acc_norm) on every full packaged set, one
# JSON per set under results/cloze-base/ (a set already written is skipped, so the script resumes).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/cloze-base}"
mkdir -p "$OUT"
for set in arc_e arc_c piqa obqa winogrande siqa boolq hellaswag; do
  if [ -f "$OUT/$set.json" ]; then echo "$set: done"; continue; fi
  smoa eval --task "$set" --method cloze --batch-size 32 --no-progress --predictions --output "$OUT/$set.json"
done
