#!/usr/bin/env bash
# Issue 7, call 2 of 2026-11-25 (afternoon): the persistent in-place loss kernel (launch configurations timed by
# --check, the fastest used), the plain-loss baseline again in the same call, a real `llmpy train` run of the fast
# path, and d48 with --auto-batch starting from a -b that cannot fit (the automatic OOM advice on the GPU).
# Usage on the device: OUT=... bash benchmarks/gpu_fused_loss_2.sh
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; J="$OUT/bench.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "=== check: compiled bf16 + fused loss vs eager fp32 on one fixed batch; loss-kernel launch timings"
timeout 150 python -m llmpy bench --check --model d12 -b 8 -t 1024 -r 0 --json "$OUT/check.jsonl" 2>&1 | tail -2 | cut -c1-2500
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
b -b 64 --fused-loss 1
[ -n "$BEST" ] && [ "$BEST" != "4096,16,2" ] && LLMPY_LOSS_KERNEL=$BEST b -b 64 --fused-loss 1
echo "=== train: real llmpy train of the fast path on random-token shards (d12, B=64, -d 524288)"
python - <<'PY'
import os
import numpy as np
from llmpy.data.shards import write_shard
os.makedirs("/tmp/rt", exist_ok=True)
rng = np.random.default_rng(0)
write_shard("/tmp/rt/rt_val_000000.bin", rng.integers(0, 50257, 2_000_000))
for i in (1, 2):
    write_shard(f"/tmp/rt/rt_train_{i:06d}.bin", rng.integers(0, 50257, 10_000_000))
PY
timeout 150 python -m llmpy train -i '/tmp/rt/rt_train_*.bin' -j '/tmp/rt/rt_val_*.bin' -o "$OUT/train_d12" -e d12 \
  -b 64 -t 1024 -d 524288 -x 20 -r 0 -v 0 -s 0 -l 0.0006 -u 10 -c 0.1 --log-every 5 2>&1 | grep -v "^USDT" | tail -6
echo "=== d48 from -b 64 with --auto-batch 1 (must halve until it fits)"
timeout 260 python -m llmpy bench --model d48 -b 64 -r 0 -t 1024 -d 524288 --steps 3 --warmup 2 --auto-batch 1 \
  --json "$J" 2>&1 | grep -v "^USDT" | grep -i -A1 "out of memory\|fits\|does not fit\|halv\|ms/step\|error" | cut -c1-400
