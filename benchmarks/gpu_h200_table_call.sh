#!/usr/bin/env bash
# One H200 call (2026-12-02, ~9 min): the fast-path check of FlexAttention with documents and a window (the default
# for compiled CUDA since the doc-mask runs of that day); issue 17's classic d12 baseline and its H200 profile (cuDNN
# attention); the classic d24 / d36 / d48 at the micro-batches the H100 table found best; in what time is left,
# d12 profiled with FlashAttention-4 (which attention kernels ran) and the d12 baseline again.
# Carries .fa4 (benchmarks/fa4_pack.sh) for the last runs; without it they end with a one-line error.
#   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_h200_table_call.sh
set -u
out="${OUT:-/tmp/out}"
deadline=${DEADLINE_S:-560}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
bench() {
    local name=$1 limit=$2
    shift 2
    [ "$SECONDS" -lt $((deadline - 30)) ] || { echo "$name skipped (deadline)"; return; }
    [ "$limit" -lt $((deadline - SECONDS)) ] || limit=$((deadline - SECONDS))
    timeout -k 5 "$limit" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >"$out/$name.txt" 2>&1
    echo "$name rc=$? t=${SECONDS}s | $(grep -E 'tok/s|PASS|FAIL|rror' "$out/$name.txt" | tail -2 | tr '\n' ' ')"
}
T="--steps 10 --warmup 3"
L="-t 1024 -d 524288 --steps 3 --warmup 2"
P="--profile /tmp/profile --profile-steps 1"  # the breakdown by kernel category goes to stdout
bench modern_docwin_check 80 --check --recipe modern --arch doc_mask=1,window=128 -e d12 -b 8 -r 0
bench d12_b64 70 -e d12 -b 64 -r 0 $T
bench d12_profile 80 -e d12 -b 64 -r 0 --steps 3 --warmup 3 $P
bench d24_b64 100 -e d24 -b 64 -r 0 $L
bench d36_b32 130 -e d36 -b 32 -r 0 $L
bench d48_b16 170 -e d48 -b 16 -r 0 $L
if [ -f .fa4/install.sh ] && bash .fa4/install.sh >"$out/fa4_install.txt" 2>&1; then
    export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages:${PYTHONPATH:-}
fi
bench d12_fa4_profile 120 -e d12 -b 64 -r 0 --attention fa4 --steps 3 --warmup 3 $P
bench d12_b64_again 60 -e d12 -b 64 -r 0 $T
echo "done t=${SECONDS}s"
