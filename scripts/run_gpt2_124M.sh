#!/usr/bin/env bash
# GPT-2 124M (d12) on FineWeb 10B with the GPT-3 recipe, 8 GPUs: llm.c's run_gpt2_124M.sh with llmpy.
# 10B tokens / 524,288 per step = 19,073 steps (one pass). Prepare the data first:
#   llmpy prepare fineweb --type classic --version 10B --out data/fineweb10B
# -b 64 fits an 80 GB GPU at -r 0 (on 8 GPUs it is exactly -d, no accumulation); on 40 GB use -b 32 (accumulation
# adapts; -d stays 524,288), or keep --auto-batch. On ONE 80 GB GPU, -b 128 (accumulation 4) is fastest: 545K tok/s.
set -eu
DATA=${DATA:-data/fineweb10B}
exec "$(dirname "$0")/train_until_done.sh" "${OUT:-log_gpt2_124M}" 19073 \
  -i "$DATA/fineweb_train_*.bin" -j "$DATA/fineweb_val_*.bin" \
  -e d12 -b 64 -t 1024 -d 524288 -x 19073 \
  -l 0.0006 -u 700 -q 0.0 -c 0.1 -k cosine \
  -v 250 -m 20 -h 1 -s 20000 -g 144 -n 5000 -nk 3 -r 0 -z 1 "$@"
