#!/usr/bin/env bash
# What only a GPU can show, in one run of under 8 minutes on one GPU; every figure goes to
# one folder (default results/gpu_check/), with the date and the device:
#   - make bench on the device (the seven ratios of docs/benchmarks.md);
#   - bf16-mixed + channels_last training of ResNet-50 and ViT-B/16 on synthetic 224 px
#     images at batch 32: images per second, Piggyback against finetuning, peak GPU memory;
#   - a 2-GPU DDP smoke run of the embedded default when two GPUs are present.
# Usage: bash scripts/gpu_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/gpu_check}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.csv"
date -u +%Y-%m-%dT%H:%M:%SZ > "$OUT/date.txt"
timeout 300 "$PY" scripts/bench.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log"
timeout 180 "$PY" scripts/gpu_throughput.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/throughput.log"
if [ "$(nvidia-smi --list-gpus | wc -l)" -ge 2 ]; then
  timeout 120 "$PY" -m src.train trainer=ddp trainer.devices=2 method.epochs=1 \
    paths.results_dir="$OUT/ddp_results" paths.log_dir="$OUT/ddp_logs" 2>&1 | tee "$OUT/ddp.log"
fi
echo "gpu check written to $OUT"
