#!/usr/bin/env bash
# Resume on the GPU: d12 compiled, bf16, 30 steps straight vs SIGKILL after the step-10 checkpoint + `-y 1`.
# Needs .devcarry/{gpt2.tiktoken,corpus_gz/*.jsonl.gz} and .whl/ (datasets wheels).
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=src:/tmp/site LLMPY_GPT2_BPE=.devcarry/gpt2.tiktoken PYTHONUNBUFFERED=1
python3 -m llmpy prepare fineweb --input .devcarry/corpus_gz/train_0*.jsonl.gz --out /tmp/fw --shard-size 2000000 --quiet | tail -1
ARGS="-i /tmp/fw/fineweb_train_*.bin -j /tmp/fw/fineweb_val_*.bin -e d12 -b 16 -t 1024 -d 65536 -x 20 -n 10 -v 10 -m 4 -s 0 -l 0.0006 -u 5 -y 1 --log-every 5"
date; timeout 240 python3 -m llmpy train $ARGS -o /tmp/straight > $OUT/straight.txt 2>&1; echo "straight exit $?"; date
python3 -m llmpy train $ARGS -o /tmp/resumed > $OUT/killed.txt 2>&1 &
PID=$!
for i in $(seq 1 2400); do [ -e /tmp/resumed/DONE_00000010 ] && break; sleep 0.1; done
kill -9 $PID; wait $PID; echo "killed with code $?; complete checkpoints: $(ls /tmp/resumed | grep DONE | tr '\n' ' ')"; date
ls -la /tmp/resumed
timeout 240 python3 -m llmpy train $ARGS -o /tmp/resumed > $OUT/resumed.txt 2>&1; echo "resumed exit $?"; date
grep -E "resuming|step +20" $OUT/resumed.txt
python3 benchmarks/compare_losses.py /tmp/straight /tmp/resumed
