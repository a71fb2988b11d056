#!/usr/bin/env bash
# GPT-2 774M (d36) on FineWeb: 150B tokens / 524,288 = 286,102 steps, GPT-3's 760M learning rate (2.5e-4), 8 GPUs.
# llmpy prepare fineweb --type classic --version 100B --out data/fineweb100B  (150B tokens: 1.5 epochs of it)
set -eu
DATA=${DATA:-data/fineweb100B}
exec "$(dirname "$0")/train_until_done.sh" "${OUT:-log_gpt2_774M}" 286102 \
  -i "$DATA/fineweb_train_*.bin" -j "$DATA/fineweb_val_*.bin" \
  -e d36 -b 16 -t 1024 -d 524288 -x 286102 \
  -l 0.00025 -u 700 -q 0.0 -c 0.1 -k cosine \
  -v 250 -m 20 -h 1 -s 20000 -g 144 -n 5000 -nk 3 -r 1 -z 1 "$@"
