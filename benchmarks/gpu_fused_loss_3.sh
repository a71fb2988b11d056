#!/usr/bin/env bash
# Issue 7, call 3 of 2026-11-25 (afternoon): loss-kernel variants (online-max vs lanewise log-sum-exp) timed by
# --check, the plain-loss baseline and the fastest variant in the same call (with a profile), then
# --compile-mode tuned (Inductor coordinate-descent tuning; long compile). Usage: OUT=... bash $0
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; J="$OUT/bench.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 150 python -m llmpy bench --check --model d12 -b 8 -t 1024 -r 0 --json "$OUT/check.jsonl" 2>&1 | tail -2 | cut -c1-300
python -c "
import json; r = json.loads(open('$OUT/check.jsonl').readlines()[-1])
for k, v in r['kernel_timings'].items(): print(f'{k:>14s} {v[\"ms\"]:.3f} ms {v[\"tb_per_s\"]:.2f} TB/s')"
BEST=$(python -c "
import json; r = json.loads(open('$OUT/check.jsonl').readlines()[-1])
t = {k: v['ms'] for k, v in r['kernel_timings'].items() if k != 'reference'}; print(min(t, key=t.get))" 2>/dev/null)
echo "fastest loss-kernel launch: ${BEST:-?}"
b() {  # one bench; a failure is logged and the script goes on
  echo "=== bench $*"
  timeout ${LIMIT:-120} python -m llmpy bench --model d12 -t 1024 -d 524288 --steps ${STEPS:-6} --warmup 3 -r 0 \
    --json "$J" "$@" 2>&1 | grep -v "^USDT" | tail -${TAILN:-2} | cut -c1-300
}
b -b 64 --fused-loss 0
export LLMPY_LOSS_KERNEL=${BEST:-4096,8,4,0}
TAILN=12 b -b 64 --fused-loss 1 --profile "$OUT/prof" --profile-steps 1
LIMIT=280 b -b 64 --fused-loss 1 --compile-mode tuned
