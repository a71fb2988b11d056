#!/usr/bin/env bash
# Issue 17's GELU-fusion lever in one device call (~9 min on an H200): the epilogue ops checked and timed alone
# (benchmarks/gpu_gelu_fusion_check.py), `bench --check` with -ge 2, then d12 -b 64 at -ge 0 / 2 / 1, -r 1 with
# and without, the baseline rerun at the end for the drift within the call, then d24 at the default. Every run is its own process;
# outputs and JSON go to $OUT/gelu.   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_gelu_fusion_call.sh
set -u
out="${OUT:-/tmp/out}/gelu"
deadline=${DEADLINE_S:-560}
mkdir -p "$out"
run() {  # run NAME LIMIT [VAR=value ...] -- bench arguments
    local name=$1 limit=$2
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    [ "$SECONDS" -lt $((deadline - 40)) ] || { echo "$name skipped (deadline)"; return; }
    [ "$limit" -lt $((deadline - SECONDS)) ] || limit=$((deadline - SECONDS))
    env "${envs[@]}" timeout "$limit" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >"$out/$name.txt" 2>&1
    echo "$name rc=$? t=${SECONDS}s | $(grep -E 'tok/s|PASS|FAIL|rror' "$out/$name.txt" | tail -2 | cut -c1-300 | tr '\n' ' ')"
}
timeout 90 python benchmarks/gpu_gelu_fusion_check.py >"$out/ops.txt" 2>&1
echo "ops rc=$? t=${SECONDS}s"; tail -40 "$out/ops.txt"
T="--steps 10 --warmup 3"
run check_ge2 120 -- --check -e d12 -b 8 -r 0 -ge 2
run d12_ge0 100 -- -e d12 -b 64 -r 0 -ge 0 $T
run d12_ge2 100 -- -e d12 -b 64 -r 0 -ge 2 $T
run d12_ge1 100 -- -e d12 -b 64 -r 0 -ge 1 $T
run d12_r1_ge0 100 -- -e d12 -b 64 -r 1 -ge 0 $T
run d12_r1_ge2 100 -- -e d12 -b 64 -r 1 -ge 2 $T
run d12_ge0_again 100 -- -e d12 -b 64 -r 0 -ge 0 $T
run d24_b64 150 -- -e d24 -b 64 -r 0 --steps 3 --warmup 2
echo "done t=${SECONDS}s"
