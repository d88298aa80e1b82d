#!/usr/bin/env bash
# The one-shot GPU check on a bare H100/H200 (the `device` tool's machine): no install, the repo's
# src/ on the path, the offline tokenizer carried in .cache/gpu_check/tokenizer (write it first, on a
# machine with the project installed: `python benchmarks/gpu_check.py --save-tokenizer .cache/gpu_check/tokenizer`).
# Writes $OUT/gpu_check.json (or reports/gpu_check.json) and prints it on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 benchmarks/gpu_check.py --device cuda --tokenizer .cache/gpu_check/tokenizer \
  --out "${OUT:-reports}/gpu_check.json" "$@"
