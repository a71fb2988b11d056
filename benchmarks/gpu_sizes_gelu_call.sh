#!/usr/bin/env bash
# Issue 17's sizes with GELU fusion on by default (-ge -1 = 2 on an H200), in one device call: d48 -b 16 (its
# compilation alone takes minutes), a real `llmpy train` of d12 on random-token shards against its bench, then d36.
# Outputs go to $OUT/sizes.   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_sizes_gelu_call.sh
set -u
out="${OUT:-/tmp/out}/sizes"
deadline=${DEADLINE_S:-560}
mkdir -p "$out"
left() { local l=$1; [ "$l" -lt $((deadline - SECONDS)) ] || l=$((deadline - SECONDS)); echo "$l"; }
timeout "$(left 330)" python -m llmpy bench -e d48 -b 16 -r 0 -t 1024 -d 524288 --steps 2 --warmup 1 \
    --json "$out/bench.jsonl" >"$out/d48_b16.txt" 2>&1
echo "d48_b16 rc=$? t=${SECONDS}s | $(grep -E 'tok/s|rror' "$out/d48_b16.txt" | tail -1 | cut -c1-300)"
data=$(python -c "from pathlib import Path; from llmpy.bench import write_random_data; print(write_random_data(Path('/tmp/rd'), 524288 * 16 + 1))")
timeout "$(left 110)" python -m llmpy train -i "$data" -e d12 -b 64 -t 1024 -d 524288 -x 14 -r 0 -v 0 -s 0 \
    --log-every 1 >"$out/d12_train.txt" 2>&1
echo "d12_train rc=$? t=${SECONDS}s"; tail -8 "$out/d12_train.txt" | cut -c1-220
timeout "$(left 160)" python -m llmpy bench -e d36 -b 32 -r 0 -t 1024 -d 524288 --steps 3 --warmup 2 \
    --json "$out/bench.jsonl" >"$out/d36_b32.txt" 2>&1
echo "d36_b32 rc=$? t=${SECONDS}s | $(grep -E 'tok/s|rror' "$out/d36_b32.txt" | tail -1 | cut -c1-300)"
echo "done t=${SECONDS}s"
