#!/usr/bin/env bash
# Issue 7, call F of 2026-11-25 (afternoon): --auto-batch from a -b that does not fit (d12 -b 256 -> 128) against
# -b 128 given directly: with the probes compiled as static graphs, both must run the same kernels and speed.
# Usage: OUT=... bash $0
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; J="$OUT/bench.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
b() {
  echo "=== bench $*"
  timeout 150 python -m llmpy bench --model d12 -t 1024 -d 524288 --steps 6 --warmup 3 -r 0 --json "$J" "$@" 2>&1 \
    | grep -v "^USDT" | grep "out of memory\|ms/step" | cut -c1-200
}
b -b 256 --auto-batch 1
b -b 128 --auto-batch 0
