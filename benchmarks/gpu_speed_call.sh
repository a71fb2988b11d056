#!/usr/bin/env bash
# Issue 17's measurements in one device call (~9 min on an H200): the classic d12 baseline, rerun at the end for the
# drift within the call; FlashAttention-4 through SDPA, profiled (which kernels ran) and checked; the chunked loss's
# memory; an H200 profile of the classic step; in what time is left, the modern d12 and --compile-mode tuned. Every run is its own `llmpy bench` process
# (--attention fa4 reroutes SDPA process-wide); outputs and JSON go to $OUT/speed.
#   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_speed_call.sh
# FA4 comes from .fa4/ (git-ignored; carried: `bash .fa4/install.sh`, see benchmarks/RESULTS.md); without it the
# fa4 runs end with a one-line error and the others go on.
set -u
out="${OUT:-/tmp/out}/speed"
deadline=${DEADLINE_S:-560}
mkdir -p "$out"
if [ -f .fa4/install.sh ] && bash .fa4/install.sh >"$out/fa4_install.txt" 2>&1; then
    export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages:${PYTHONPATH:-}
fi
echo "fa4 install t=${SECONDS}s: $(tail -1 "$out/fa4_install.txt" 2>/dev/null)"
run() {
    local name=$1 limit=$2
    shift 2
    [ "$SECONDS" -lt $((deadline - 40)) ] || { echo "$name skipped (deadline)"; return; }
    [ "$limit" -lt $((deadline - SECONDS)) ] || limit=$((deadline - SECONDS))
    timeout "$limit" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >"$out/$name.txt" 2>&1
    echo "$name rc=$? t=${SECONDS}s | $(grep -E 'tok/s|PASS|FAIL|rror' "$out/$name.txt" | tail -2 | tr '\n' ' ')"
}
T="--steps 10 --warmup 3"
P="--profile /tmp/profile --profile-steps 1"  # the breakdown by kernel goes to stdout; the trace stays behind
run d12_b64 100 -e d12 -b 64 -r 0 $T
run d12_fa4_profile 150 -e d12 -b 64 -r 0 --attention fa4 $T $P  # which attention kernels ran, and their time
run d12_fa4_check 200 --check -e d12 -b 8 -r 0 --attention fa4  # FA4's CuTe kernels compile at first use
run d12_chunk8k 100 -e d12 -b 64 -r 0 --loss-chunk-rows 8192 $T  # peak memory vs d12_b64
run d12_profile 120 -e d12 -b 64 -r 0 --steps 3 --warmup 3 $P
run d12_b64_again 100 -e d12 -b 64 -r 0 $T
run modern_d12 100 --recipe modern -e d12 -b 64 -r 0 $T
run d12_tuned 150 -e d12 -b 64 -r 0 --compile-mode tuned $T
echo "done t=${SECONDS}s"
