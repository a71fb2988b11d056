#!/usr/bin/env bash
# Issue 7 speed changes against the previous code in the same call (BASE=path to that src), then issue 6's FSDP on one
# GPU (torchrun, world size 1, -z 1 and -z 3, compiled). Usage on the device: BASE=.devcarry/base_src OUT=... bash $0
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; J="$OUT/bench.jsonl"
B="--model d12 -t 1024 -d 524288 --steps 10 --warmup 3"
run() { echo "=== $*"; timeout 300 "$@" 2>&1 | grep -v "^USDT\|UserWarning\|_warn_once" | tail -${TAILN:-2}; }
run env PYTHONPATH=${BASE:-.devcarry/base_src} python -m llmpy bench $B -b 32 -r 0 --json "$OUT/base.jsonl"
export PYTHONPATH=src
run python -m llmpy bench $B -b 32 -r 0 --json "$J"
run python -m llmpy bench $B -b 64 -r 0 --json "$J"
run python -m llmpy bench $B -b 32 -r 1 --json "$J"
TAILN=36 run python -m llmpy bench $B -b 32 -r 0 --profile "$OUT/prof" --profile-steps 1
run torchrun --standalone --nproc_per_node=1 -m llmpy bench $B -b 32 -r 0 -z 1 --json "$J"
run torchrun --standalone --nproc_per_node=1 -m llmpy bench $B -b 32 -r 0 -z 3 --json "$J"
rm -rf "$OUT/prof"
