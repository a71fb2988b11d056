#!/usr/bin/env bash
# Issue 26's safety machinery on a GPU (d12, bf16, compiled): self-verifying checkpoints of CUDA state, the run lock
# (a second run refused; a kill -9 leaves a stale lock that the resume takes over), bitwise-or-near resume, the
# refusal to extend a finished schedule, and loading the run in sample/convert. Prints what it measured.
# Needs .devcarry/{gpt2.tiktoken,corpus_gz/{train_0[0-3],val_00}.jsonl.gz} (carry .devcarry).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=src LLMPY_GPT2_BPE=.devcarry/gpt2.tiktoken LLMPY_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m llmpy prepare text --input .devcarry/corpus_gz/train_0*.jsonl.gz --val-input .devcarry/corpus_gz/val_00.jsonl.gz \
    --out /tmp/corpus --name corpus --shard-size 2000000 --quiet | tail -1
ARGS="-i /tmp/corpus/corpus_train_*.bin -j /tmp/corpus/corpus_val_*.bin -e d12 -b 16 -t 1024 -d 65536 -x 20 -n 10 -v 10
      -m 4 -s 0 -l 0.0006 -u 5 -q 0 --log-every 5"
timeout 300 python3 -m llmpy train $ARGS -o /tmp/straight > "$OUT/straight.txt" 2>&1; echo "straight exit $?"
grep -E "checkpoint:" "$OUT/straight.txt" | tail -2

# a second run on a live -o is refused; a kill -9 after the step-10 checkpoint leaves a stale lock
python3 -m llmpy train $ARGS -y 1 -o /tmp/resumed > "$OUT/killed.txt" 2>&1 &
PID=$!
for i in $(seq 1 3000); do [ -e /tmp/resumed/run.lock ] && break; sleep 0.1; done
python3 -m llmpy train $ARGS -o /tmp/resumed > "$OUT/second.txt" 2>&1; echo "second run on a live -o: exit $? | $(tail -1 "$OUT/second.txt")"
for i in $(seq 1 3000); do [ -e /tmp/resumed/DONE_00000010 ] && break; sleep 0.1; done
kill -9 $PID; wait $PID 2>/dev/null; echo "killed; markers: $(ls /tmp/resumed | grep DONE | tr '\n' ' ')"
timeout 300 python3 -m llmpy train $ARGS -y 1 -o /tmp/resumed > "$OUT/resumed.txt" 2>&1; echo "resumed exit $?"
grep -E "stale lock|resuming|using" "$OUT/resumed.txt" | cut -c1-250
python3 benchmarks/compare_losses.py /tmp/straight /tmp/resumed
# the saved digests are checked at load (CUDA state hashed at save); time a d12 model-file load with its check
python3 - <<'PY'
import time
from llmpy.checkpoint import load_model, payload_digest
import torch
t = time.time(); model, _ = load_model("/tmp/resumed/model_00000020.pt"); print(f"load + verify d12 model file: {time.time() - t:.2f} s")
state = torch.load("/tmp/resumed/state_00000020_00000.pt", weights_only=True)
t = time.time(); payload_digest(state); print(f"digest of the d12 state file's payload: {time.time() - t:.2f} s")
PY
python3 -m llmpy train $ARGS -y 1 -x 30 -o /tmp/resumed > "$OUT/extend.txt" 2>&1; echo "-y 1 -x 30 past a finished schedule: exit $? | $(tail -1 "$OUT/extend.txt" | cut -c1-300)"
python3 -m llmpy train $ARGS -y 1 -o /tmp/resumed > "$OUT/again.txt" 2>&1; echo "-y 1 of a complete run: exit $? | $(tail -1 "$OUT/again.txt" | cut -c1-200)"
python3 -m llmpy sample --model /tmp/resumed --prompt "The" --max-new-tokens 16 > "$OUT/sample.txt" 2>&1; echo "sample exit $?"; cut -c1-200 "$OUT/sample.txt" | head -4
python3 -m llmpy convert --model /tmp/resumed --to llmpy --out /tmp/exported 2>&1 | tail -2 | cut -c1-200
