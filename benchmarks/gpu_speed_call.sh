#!/usr/bin/env bash
# Issue 17's first measurements in one device call (~8 min on an H200): the classic d12 baseline, rerun at the end
# for the drift within the call, the fast-path check, and each lever that exists as a flag. Every run is its own
# `llmpy bench` process (--attention fa4 reroutes SDPA process-wide); its output and JSON go to $OUT/speed.
#   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_speed_call.sh
# fa4 needs flash-attn-4 installed first (two calls: .whl/fa4_stage.sh, see issue 17's notes); without it that
# run ends with a one-line error and the others go on.
set -u
out="${OUT:-/tmp/out}/speed"
mkdir -p "$out"
run() {
    local name=$1
    shift
    timeout "${LIMIT:-150}" python -m llmpy bench "$@" --json "$out/$name.json" >"$out/$name.txt" 2>&1
    echo "$name rc=$? | $(grep -E 'tok/s|PASS|FAIL|error' "$out/$name.txt" | tail -1)"
}
run d12_b64 -e d12 -b 64 -r 0
run d12_check --check -e d12 -b 8 -r 0
run d12_fa4 -e d12 -b 64 -r 0 --attention fa4
run d12_fa4_check --check -e d12 -b 8 -r 0 --attention fa4
run d12_tuned -e d12 -b 64 -r 0 --compile-mode tuned
run modern_d12 --recipe modern -e d12 -b 64 -r 0
run modern_d12_doc --recipe modern --arch doc_mask=1 -e d12 -b 64 -r 0
run modern_d12_fp8 --recipe modern --arch fp8_head=1 -e d12 -b 64 -r 0
run modern_d12_fp8_check --check --recipe modern --arch fp8_head=1 -e d12 -b 8 -r 0
run d12_b64_again -e d12 -b 64 -r 0
