#!/usr/bin/env bash
# The device run behind benchmarks/RESULTS.md "first slice": d12 on the shared corpus, a larger micro-batch, and
# the quickstart on a GPU. Expects .devcarry/ (made on the CPU machine, git-ignored):
#   .devcarry/gpt2.tiktoken, .devcarry/cache/{gpt2.tiktoken,tinyshakespeare.txt},
#   .devcarry/corpus/  <- llmpy prepare text --input corpus/train_*.jsonl.gz --val-input corpus/val_00.jsonl.gz --name corpus
set -uo pipefail
OUT=${OUT:-/tmp/out}
export PYTHONPATH=src LLMPY_GPT2_BPE=.devcarry/gpt2.tiktoken LLMPY_CACHE=.devcarry/cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
DATA=".devcarry/corpus"
# 1. GPT-2 124M, llm.c's 124M recipe scaled to 60 steps: B=32, T=1024, 524,288 tokens per step (accumulation 16)
python3 -m llmpy train -i "$DATA/corpus_train_*.bin" -j "$DATA/corpus_val_*.bin" -o "$OUT/d12_b32" -e d12 \
  -b 32 -t 1024 -d 524288 -l 0.0006 -u 10 -q 0.1 -c 0.1 -x 60 -v 20 -m 20 -s 60 -g 64 2>&1 | tee "$OUT/d12_b32.txt"
# 2. micro-batch 64, no accumulation: steady-state tokens/s and memory
python3 -m llmpy train -i "$DATA/corpus_train_*.bin" -e d12 -b 64 -t 1024 -d 65536 -l 0.0006 -x 40 -v 0 -s 0 \
  2>&1 | tee "$OUT/d12_b64.txt"
# 3. the quickstart on a GPU
python3 -m llmpy quickstart --out "$OUT/quickstart" 2>&1 | tee "$OUT/quickstart.txt"
