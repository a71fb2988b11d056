#!/usr/bin/env bash
# Issue 17, the third FlashAttention-4 call (~8 min on an H200), with flash-attn-4 installed so that --attention
# auto becomes cudnn+fa4: d12 -b 64 at the defaults; a real `llmpy train` of d12 against it; bench --check at the
# defaults with -r 1; d48 -b 32 with --attention cudnn (before) and at the defaults (after). All output goes to
# $OUT/fa4/runs.log and bench.jsonl.   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_fa4_call_3.sh
set -u
out="${OUT:-/tmp/out}/fa4"
log="$out/runs.log"
deadline=${DEADLINE_S:-540}
mkdir -p "$out"
if [ -f .fa4/install.sh ] && bash .fa4/install.sh >>"$log" 2>&1; then
    export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages:${PYTHONPATH:-}
fi
echo "fa4 install t=${SECONDS}s: $(tail -1 "$log")"
left() { local l=$1; [ "$l" -lt $((deadline - SECONDS)) ] || l=$((deadline - SECONDS)); echo "$l"; }
run() {
    local name=$1 limit=$2
    shift 2
    [ "$SECONDS" -lt $((deadline - 40)) ] || { echo "$name skipped (deadline)"; return; }
    echo "=== $name: bench $*" >>"$log"
    timeout "$(left "$limit")" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >/tmp/run.txt 2>&1
    local rc=$?
    cat /tmp/run.txt >>"$log"
    echo "$name rc=$rc t=${SECONDS}s | $(grep -E '^device|tok/s|PASS|FAIL|rror' /tmp/run.txt | tail -3 | cut -c1-300 | tr '\n' ' ')"
}
run d12_default 90 -e d12 -b 64 -r 0 --steps 10 --warmup 3
data=$(python -c "from pathlib import Path; from llmpy.bench import write_random_data; print(write_random_data(Path('/tmp/rd'), 524288 * 16 + 1))")
echo "=== d12_train" >>"$log"
timeout "$(left 100)" python -m llmpy train -i "$data" -e d12 -b 64 -t 1024 -d 524288 -x 14 -r 0 -v 0 -s 0 \
    --log-every 1 -o /tmp/run_d12 >/tmp/train.txt 2>&1
echo "d12_train rc=$? t=${SECONDS}s"; cat /tmp/train.txt >>"$log"; grep -E "^device|^step +1[0-4]/|^mean|^peak" /tmp/train.txt | cut -c1-200
run check_r1 80 --check -e d12 -b 8 -r 1
run d48_b32_cudnn 220 -e d48 -b 32 -r 0 --attention cudnn --steps 2 --warmup 1
run d48_b32_default 220 -e d48 -b 32 -r 0 --steps 2 --warmup 1
echo "done t=${SECONDS}s"
