#!/usr/bin/env bash
# Issue 17, prepared for the next device call (~9 min on an H200; not yet run), flash-attn-4 carried in .fa4/:
# the post-review FA4 code checked at the defaults (auto -> cudnn+fa4 through fa4.probe); cuBLASLt's heuristic
# candidates timed for the GELU epilogues (LLMPY_CUBLASLT_TUNE=8, benchmarks/gpu_gelu_fusion_check.py prints
# candidate_ms) and d12 with and without the tuning; d36 -b 64 with cuDNN and at the defaults. The checks also time
# the loss kernel's whole-row launches (LANEWISE 2, kernel_timings in their JSON). All output goes to
# $OUT/next/runs.log and bench.jsonl.   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_next_call.sh
set -u
out="${OUT:-/tmp/out}/next"
log="$out/runs.log"
deadline=${DEADLINE_S:-560}
source benchmarks/device_call_lib.sh  # the FA4 install, left, run
run check_default 100 -- --check -e d12 -b 8 -r 0
echo "=== gelu ops, tuned" >>"$log"
LLMPY_CUBLASLT_TUNE=8 timeout 60 python benchmarks/gpu_gelu_fusion_check.py >>"$log" 2>&1
echo "gelu ops tuned rc=$? t=${SECONDS}s"; grep -A12 candidate_ms "$log" | cut -c1-200
T="--steps 10 --warmup 3"
run d12 90 -- -e d12 -b 64 -r 0 $T
run d12_tuned 90 LLMPY_CUBLASLT_TUNE=8 -- -e d12 -b 64 -r 0 $T
run check_tuned 90 LLMPY_CUBLASLT_TUNE=8 -- --check -e d12 -b 8 -r 0
run d36_b64_cudnn 130 -- -e d36 -b 64 -r 0 --attention cudnn --steps 3 --warmup 1
run d36_b64 130 -- -e d36 -b 64 -r 0 --steps 3 --warmup 1
echo "done t=${SECONDS}s"
