#!/usr/bin/env bash
# Issue 17, CUDA graphs over the micro-step (--cuda-graphs 1), one device call (~9 min on an H200), flash-attn-4
# carried in .fa4/: bench --check with the graph (replays vs eager gradients); d12 -b 64 without and with graphs,
# bracketed; a real `llmpy train` with graphs, evaluations and a checkpoint between steps; the modern recipe's d12
# without and with graphs; d24 without and with graphs. All output goes to $OUT/graphs/runs.log and bench.jsonl.
#   PYTHONPATH=src LLMPY_OFFLINE=1 bash benchmarks/gpu_graphs_call.sh
set -u
out="${OUT:-/tmp/out}/graphs"
log="$out/runs.log"
deadline=${DEADLINE_S:-560}
source benchmarks/device_call_lib.sh  # the FA4 install, left, run
run check_graphs 100 -- --check -e d12 -b 8 -r 0 --cuda-graphs 1
T="--steps 10 --warmup 3"
run d12 80 -- -e d12 -b 64 -r 0 $T
run d12_graphs 80 -- -e d12 -b 64 -r 0 $T --cuda-graphs 1
run d12_again 80 -- -e d12 -b 64 -r 0 $T
data=$(python -c "from pathlib import Path; from llmpy.bench import write_random_data; print(write_random_data(Path('/tmp/rd'), 524288 * 16 + 1))")
echo "=== d12_train_graphs" >>"$log"
timeout "$(left 100)" python -m llmpy train -i "$data" -j "$data" -e d12 -b 64 -t 1024 -d 524288 -x 14 -r 0 -v 7 \
    -m 4 -n 7 -s 0 --log-every 1 --cuda-graphs 1 -o /tmp/run_d12 >/tmp/train.txt 2>&1
echo "d12_train_graphs rc=$? t=${SECONDS}s"; cat /tmp/train.txt >>"$log"
grep -E "^device|^step +1[0-4]/|^mean|^peak|val|rror" /tmp/train.txt | cut -c1-200; ls /tmp/run_d12 >>"$log"
run modern 90 -- --recipe modern -e d12 -b 64 -r 0 $T
run modern_graphs 90 -- --recipe modern -e d12 -b 64 -r 0 $T --cuda-graphs 1
run d24 110 -- -e d24 -b 64 -r 0 --steps 4 --warmup 2
run d24_graphs 110 -- -e d24 -b 64 -r 0 --steps 4 --warmup 2 --cuda-graphs 1
echo "done t=${SECONDS}s"
