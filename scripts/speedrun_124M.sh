#!/usr/bin/env bash
# NOT YET RUN AT THIS SCALE HERE: the token count is the NanoGPT speedrun's published one, not measured by llmpy.
# The frontier recipe at GPT-2 124M size (d12) on FineWeb 10B, aiming at the speedrun's target of 3.28 val loss
# (llm.c's 10B-token classic run reaches ~3.28 at its end; OpenAI's GPT-2 124M scores 3.425 there). The speedrun's
# July-2026 record reached 3.28 in ~0.34B tokens (1285 steps of a 131K -> 262K -> 393K-token batch schedule, 338.8M
# tokens; 1.23 min on 8xH100, ~9.9 min on one H100). Here: 1,293 steps x 262,144 tokens (its middle batch, near its
# mean of 264K per step) = 0.339B tokens, at the frontier recipe's settings, measured so far only at 65,536 tokens
# per step on the 15.6M-token shared corpus (benchmarks/RESULTS.md). Watch `tel:` in main.log (or `llmpy plot OUT`)
# for the step that crosses 3.28; `llmpy plan --recipe frontier --gpus 8` estimates the time and cost.
# Beside it, scripts/run_gpt2_124M.sh is llm.c's classic run (19,073 steps, 10B tokens).
#   GPUS=8 (default): torchrun on 8 GPUs, -b 32: 8 x 32 x 1024 = -d 262144, no accumulation.
#   GPUS=1: one GPU, -b 64, accumulation 4: the same steps and tokens.
# Val: 10,485,760 tokens (the speedrun's) every 125 steps: -m x -b x 1024 x GPUs. The data is prepared on first use:
# the first 1B tokens of FineWeb 10B (100M val, 900M train; the run reads 0.34B).
set -eu
DATA=${DATA:-data/fineweb10B}
GPUS=${GPUS:-8}
case "$GPUS" in
  8) B=32; M=40 ;;
  1) B=64; M=160 ;;
  *) echo "speedrun_124M.sh: GPUS must be 8 or 1, got '$GPUS'" >&2; exit 2 ;;
esac
grep -qs '"complete": true' "$DATA/manifest.json" ||
  python -m llmpy prepare fineweb --type classic --version 10B --max-tokens 1000000000 --out "$DATA"
export NPROC=$GPUS  # train_until_done.sh: torchrun's processes
exec "$(dirname "$0")/train_until_done.sh" "${OUT:-log_speedrun_124M}" 1293 \
  --recipe frontier \
  -i "$DATA/fineweb_train_*.bin" -j "$DATA/fineweb_val_*.bin" \
  -e d12 -b "$B" -t 1024 -d 262144 -x 1293 \
  -v 125 -m "$M" -h 1 -s 500 -g 144 -n 250 -nk 3 -r 0 -z 0 "$@"
