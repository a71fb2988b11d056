#!/usr/bin/env bash
# Issue 7's size table (d24, d36, d48 at T=1024, -d 524288, one GPU) and issue 8's real GPU run to plot: GPT-2 124M
# for one epoch of the shared 15.6M-token corpus (shards prepared locally into .devcarry/corpus), with val loss and
# HellaSwag (2,000 examples) every 20 steps. Usage on the device: OUT=... bash $0
set -u
export PYTHONPATH=src NCCL_NVLS_ENABLE=0 LLMPY_GPT2_BPE=.devcarry/gpt2.tiktoken LLMPY_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; J="$OUT/bench.jsonl"
run() { echo "=== $*"; timeout 400 "$@" 2>&1 | grep -v "^USDT\|UserWarning\|_warn_once" | tail -${TAILN:-2}; }
TAILN=16 run python -m llmpy train -i '.devcarry/corpus/corpus_train_*.bin' -j '.devcarry/corpus/corpus_val_*.bin' \
  -o "$OUT/d12_corpus" -e d12 -b 32 -t 1024 -d 131072 -x 119 -l 0.0006 -u 20 -q 0.1 -c 0.1 -r 0 \
  -v 20 -m 8 -h 1 --hellaswag-file .devcarry/hellaswag_val.jsonl --hellaswag-limit 2000 -s 119 -g 48 --log-every 10
rm -f "$OUT"/d12_corpus/*.pt
S="-t 1024 -d 524288 --steps 5 --warmup 2 --auto-batch 1"
run python -m llmpy bench --model d24 -b 32 -r 0 $S --json "$J"
run python -m llmpy bench --model d36 -b 16 -r 0 $S --json "$J"
run python -m llmpy bench --model d48 -b 8 -r 1 $S --json "$J"
