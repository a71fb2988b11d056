#!/usr/bin/env bash
# Issue 7, session of 2026-11-25 (afternoon): the fused head + loss kernel and the compile modes, d12 at T=1024,
# -d 524288 on one H100, with the plain loss path re-measured in the same call as the baseline; then the fast-path
# check against eager fp32 on the GPU. Usage on the device: OUT=... bash benchmarks/gpu_fused_loss.sh
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
J="$OUT/bench.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
python -c "import flash_attn_interface" 2>&1 | tail -1  # is FlashAttention-3 installed?
echo "=== check: compiled bf16 + fused loss vs eager fp32, one fixed batch"
timeout 150 python -m llmpy bench --check --model d12 -b 8 -t 1024 -r 0 --json "$OUT/check.jsonl" 2>&1 | tail -2
b() {  # one bench; a failure is logged and the script goes on
  echo "=== bench $*"
  timeout ${LIMIT:-120} python -m llmpy bench --model d12 -t 1024 -d 524288 --steps ${STEPS:-6} --warmup 3 -r 0 \
    --json "$J" "$@" 2>&1 | grep -v "^USDT" | tail -${TAILN:-2} | cut -c1-400
}
b -b 64 --fused-loss 0
TAILN=16 b -b 64 --fused-loss 1 --profile "$OUT/prof" --profile-steps 1
LIMIT=150 b -b 64 --fused-loss 1 --compile-mode tuned
b -b 64 --fused-loss 1 --compile-mode reduce-overhead
b -b 32 --fused-loss 1
LIMIT=170 b -b 64 --fused-loss 1 --compile-mode max-autotune-no-cudagraphs
