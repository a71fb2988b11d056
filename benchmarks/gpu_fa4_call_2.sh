#!/usr/bin/env bash
# Issue 17, the second FlashAttention-4 call (~9 min on an H200): attention alone at d12's and d48's shapes with
# cuDNN's forward + FA4's backward added (benchmarks/gpu_attention_ops.py); d12 -b 64 with cuDNN (the baseline,
# rerun at the end), fa4 and cudnn+fa4; bench --check for cudnn+fa4; a profile of the cudnn+fa4 step (its breakdown
# printed); d24 -b 64 with cuDNN and cudnn+fa4. All output goes to $OUT/fa4/runs.log and bench.jsonl (few files:
# the device returns only a handful).   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_fa4_call_2.sh
set -u
out="${OUT:-/tmp/out}/fa4"
log="$out/runs.log"
deadline=${DEADLINE_S:-570}
mkdir -p "$out"
if [ -f .fa4/install.sh ] && bash .fa4/install.sh >>"$log" 2>&1; then
    export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages:${PYTHONPATH:-}
fi
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4_cache
echo "fa4 install t=${SECONDS}s: $(tail -1 "$log")"
run() {
    local name=$1 limit=$2
    shift 2
    [ "$SECONDS" -lt $((deadline - 40)) ] || { echo "$name skipped (deadline)"; return; }
    [ "$limit" -lt $((deadline - SECONDS)) ] || limit=$((deadline - SECONDS))
    echo "=== $name: bench $*" >>"$log"
    timeout "$limit" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >/tmp/run.txt 2>&1
    local rc=$?
    cat /tmp/run.txt >>"$log"
    echo "$name rc=$rc t=${SECONDS}s | $(grep -E 'tok/s|PASS|FAIL|rror' /tmp/run.txt | tail -2 | cut -c1-400 | tr '\n' ' ')"
}
for shape in "--batch 64 --heads 12" "--batch 16 --heads 25"; do
    echo "=== attention ops $shape" >>"$log"
    timeout 120 python benchmarks/gpu_attention_ops.py $shape --json "$out/attention_ops.jsonl" >>"$log" 2>&1
    echo "attention ops $shape rc=$? t=${SECONDS}s"; tail -1 "$out/attention_ops.jsonl"
done
T="--steps 10 --warmup 3"
run d12_b64 100 -e d12 -b 64 -r 0 $T
run d12_fa4 100 -e d12 -b 64 -r 0 --attention fa4 $T
run d12_cudnn_fa4 100 -e d12 -b 64 -r 0 --attention cudnn+fa4 $T
run check_cudnn_fa4 90 --check -e d12 -b 8 -r 0 --attention cudnn+fa4
run d12_cudnn_fa4_profile 100 -e d12 -b 64 -r 0 --attention cudnn+fa4 --steps 3 --warmup 3 --profile /tmp/profile --profile-steps 1
sed -n '/^profile of/,/^d12 B=/p' /tmp/run.txt | cut -c1-150
run d12_b64_again 100 -e d12 -b 64 -r 0 $T
run d24_b64 120 -e d24 -b 64 -r 0 --steps 4 --warmup 2
run d24_b64_cudnn_fa4 120 -e d24 -b 64 -r 0 --attention cudnn+fa4 --steps 4 --warmup 2
echo "done t=${SECONDS}s"
