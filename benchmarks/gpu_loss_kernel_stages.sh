#!/usr/bin/env bash
# Issue 7, call E of 2026-11-25 (afternoon): loss-kernel launches with software pipelining (tl.range num_stages),
# timed on 8192 x 50304 bf16 logits; then d12 B=64 with the default launch and with the fastest one, same call.
# Usage: OUT=... bash $0
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; J="$OUT/bench.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python - "$OUT/kernel.json" <<'PY'
import json, sys
import torch
from llmpy.bench import check_loss_kernel
result = check_loss_kernel(torch.device("cuda"), 42)
json.dump(result, open(sys.argv[1], "w"))
print("passed", result["kernel_passed"], "loss diff", result["kernel_loss_max_abs_diff"], "grad diff",
      result["kernel_grad_max_abs_diff"])
for name, t in result["kernel_timings"].items():
    print(f"{name:>16s} {t['ms']:.3f} ms {t['tb_per_s']:.2f} TB/s")
PY
BEST=$(python -c "
import json; r = json.load(open('$OUT/kernel.json'))
t = {k: v['ms'] for k, v in r['kernel_timings'].items() if k != 'reference'}; print(min(t, key=t.get))")
echo "fastest: $BEST"
b() {
  echo "=== bench $* (LLMPY_LOSS_KERNEL=${LLMPY_LOSS_KERNEL:-default})"
  timeout 120 python -m llmpy bench --model d12 -t 1024 -d 524288 --steps 6 --warmup 3 -r 0 --json "$J" "$@" 2>&1 \
    | grep -v "^USDT" | tail -2 | cut -c1-200
}
b -b 64
[ "$BEST" != "4096,8,4,0,1" ] && LLMPY_LOSS_KERNEL=$BEST b -b 64
