#!/usr/bin/env bash
# Issue 17, FlashAttention-4 called directly on the packed q/k/v (--attention fa4), in one device call (~9 min on an
# H200): the GELU epilogue ops rechecked; attention alone, cuDNN SDPA vs FA4 direct (benchmarks/gpu_attention_ops.py);
# d12 -b 64 with cuDNN (the baseline, rerun at the end for the drift within the call) and with fa4; bench --check
# for fa4 and for the default fast path; a profile of the fa4 step. Every run is its own process; outputs go to
# $OUT/fa4.   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_fa4_call.sh
# FA4 comes from .fa4/ (git-ignored, built by benchmarks/fa4_pack.sh and carried); its compiled kernels are cached
# on disk for the call, so only the first process compiles them.
set -u
out="${OUT:-/tmp/out}/fa4"
deadline=${DEADLINE_S:-570}
mkdir -p "$out"
if [ -f .fa4/install.sh ] && bash .fa4/install.sh >"$out/fa4_install.txt" 2>&1; then
    export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages:${PYTHONPATH:-}
fi
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4_cache
echo "fa4 install t=${SECONDS}s: $(tail -1 "$out/fa4_install.txt" 2>/dev/null)"
run() {
    local name=$1 limit=$2
    shift 2
    [ "$SECONDS" -lt $((deadline - 40)) ] || { echo "$name skipped (deadline)"; return; }
    [ "$limit" -lt $((deadline - SECONDS)) ] || limit=$((deadline - SECONDS))
    timeout "$limit" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >"$out/$name.txt" 2>&1
    echo "$name rc=$? t=${SECONDS}s | $(grep -E 'tok/s|PASS|FAIL|rror' "$out/$name.txt" | tail -2 | cut -c1-400 | tr '\n' ' ')"
}
timeout 60 python benchmarks/gpu_gelu_fusion_check.py >"$out/gelu_ops.txt" 2>&1
echo "gelu ops rc=$? t=${SECONDS}s | $(tail -c 600 "$out/gelu_ops.txt")"
timeout 200 python benchmarks/gpu_attention_ops.py --json "$out/attention_ops.jsonl" >"$out/attention_ops.txt" 2>&1
echo "attention ops rc=$? t=${SECONDS}s"; tail -c 1500 "$out/attention_ops.txt"
T="--steps 10 --warmup 3"
P="--profile /tmp/profile --profile-steps 1"
run d12_b64 100 -e d12 -b 64 -r 0 $T
run d12_fa4 100 -e d12 -b 64 -r 0 --attention fa4 $T
run check_fa4 120 --check -e d12 -b 8 -r 0 --attention fa4
run check_default 90 --check -e d12 -b 8 -r 0
run d12_fa4_profile 100 -e d12 -b 64 -r 0 --attention fa4 --steps 3 --warmup 3 $P
run d12_b64_again 100 -e d12 -b 64 -r 0 $T
echo "done t=${SECONDS}s"
