#!/usr/bin/env bash
# Issue 7's size table, call 4 of 2026-11-25 (afternoon), fused loss on: d48 at the -b that --auto-batch found in
# call 2 (64 and 32 ran out of memory, 16 fit), d24 at -b 64, d36 at -b 32 -r 1. Usage: OUT=... bash $0
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; J="$OUT/bench.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
b() {
  echo "=== bench $*"
  timeout ${LIMIT:-150} python -m llmpy bench -t 1024 -d 524288 --steps 3 --warmup 2 --json "$J" "$@" 2>&1 \
    | grep -v "^USDT" | grep -i "out of memory\|ms/step\|error" | cut -c1-300
}
LIMIT=280 b --model d48 -b 16 -r 0
b --model d24 -b 64 -r 0
b --model d36 -b 32 -r 1
