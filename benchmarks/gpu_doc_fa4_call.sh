#!/usr/bin/env bash
# 2026-12-02 call 3 (what device time was left): the document-mask run with the tile-bound block mask (FlexAttention
# alone under CUDA_LAUNCH_BLOCKING=1 if it fails), then the classic d12 bench with FlashAttention-4 and with
# cuDNN attention (the default), and FA4's fast-path check. Carries .fa4 and .devcarry/corpus_head (the first 2,000,000 train and
# 700,000 val tokens of the corpus: all that 30 steps of 65,536 and 10 val batches read, so the run is the same).
#   PYTHONPATH=src LLMPY_OFFLINE=1 LLMPY_GPT2_BPE=$PWD/.devcarry/gpt2.tiktoken bash benchmarks/gpu_doc_fa4_call.sh
set -u
out="${OUT:-/tmp/out}"
mkdir -p "$out/attn"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
bench() {
    local name=$1 limit=$2
    shift 2
    timeout -k 5 "$limit" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >"$out/$name.txt" 2>&1
    echo "$name rc=$? t=${SECONDS}s | $(grep -E 'tok/s|PASS|FAIL|rror' "$out/$name.txt" | tail -2 | tr '\n' ' ')"
}
CORPUS=.devcarry/corpus_head timeout -k 5 140 python benchmarks/gpu_modern_runs.py attention "$out/attn" m30_doc \
    >"$out/attn_m30_doc.txt" 2>&1
code=$?
echo "m30_doc rc=$code t=${SECONDS}s | $(grep -E 'RESULT|rror' "$out/attn_m30_doc.txt" | tail -1 | cut -c1-500)"
[ $code -eq 0 ] || CUDA_LAUNCH_BLOCKING=1 timeout -k 5 45 python benchmarks/gpu_flex_check.py .devcarry/corpus_head/corpus_train_000001.bin tiles infer 2>&1 | tail -8
bash .fa4/install.sh >"$out/fa4_install.txt" 2>&1 && export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages:$PYTHONPATH
echo "fa4 install rc=$? t=${SECONDS}s: $(tail -1 "$out/fa4_install.txt")"
bench d12_fa4 90 -e d12 -b 64 -r 0 --steps 6 --warmup 2 --attention fa4
bench d12_b64 80 -e d12 -b 64 -r 0 --steps 6 --warmup 2
bench d12_fa4_check 60 --check -e d12 -b 8 -r 0 --attention fa4
echo "done t=${SECONDS}s"
