#!/usr/bin/env bash
# GPU figures for the README's Scale-out runbook, on one lent GPU (H100/H200), about 4 min:
#   (a) a RepBend step on a random-init model of Llama-3-8B's shape: micro-batch 4, bf16,
#       gradient checkpointing, recipe lengths (512 prompt + 512 response, retain 1024):
#       peak memory, tokens/s, MFU; then HF generation speed on the same model;
#   (b) the same step at Llama-3.2-1B's shape.
# Needs torch, transformers, accelerate and peft; no network, no model files (the byte
# tokenizer is built in), the package not installed (PYTHONPATH=src).
#   OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
set -x
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
# The recipe's data files are not here: the shipped sample rows, repeated 8 times so that
# rows reach the recipe's caps.
COMMON=(--device cuda --config configs/recipe.yaml --lengthen 8
        "data.sources=[{path: examples/data/sample_train.jsonl, layout: generic}]"
        train.micro_batch=4 train.gradient_checkpointing=true train.precision=bf16)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
timeout 60 "$PYTHON" -c "import sys, torch, transformers, accelerate, peft; print(sys.version.split()[0], torch.__version__, transformers.__version__, accelerate.__version__, peft.__version__)" > "$OUT/versions.txt" 2>&1

timeout 300 "$PYTHON" benchmarks/train_step.py --shape llama3-8b --steps 6 --generate 32 --new-tokens 256 "${COMMON[@]}" \
    > "$OUT/llama3-8b.txt" 2>&1
echo "llama3-8b exit $?" >> "$OUT/status.txt"
timeout 150 "$PYTHON" benchmarks/train_step.py --shape llama-1b --steps 6 "${COMMON[@]}" loss.repbend.target_layers=auto > "$OUT/llama-1b.txt" 2>&1
echo "llama-1b exit $?" >> "$OUT/status.txt"

set +x
for run in llama3-8b llama-1b; do tail -n 1 "$OUT/$run.txt"; done | tee "$OUT/summary.jsonl"
cat "$OUT/status.txt" "$OUT/versions.txt" "$OUT/gpu.txt"
