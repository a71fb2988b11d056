#!/usr/bin/env bash
# GPT-2 350M (d24) on FineWeb: 30B tokens / 524,288 = 57,220 steps, GPT-3's 350M learning rate (3e-4), 8 GPUs.
# llmpy prepare fineweb --type classic --version 100B --out data/fineweb100B
set -eu
DATA=${DATA:-data/fineweb100B}
exec "$(dirname "$0")/train_until_done.sh" "${OUT:-log_gpt2_350M}" 57220 \
  -i "$DATA/fineweb_train_*.bin" -j "$DATA/fineweb_val_*.bin" \
  -e d24 -b 32 -t 1024 -d 524288 -x 57220 \
  -l 0.0003 -u 700 -q 0.0 -c 0.1 -k cosine \
  -v 250 -m 20 -h 1 -s 20000 -g 144 -n 5000 -nk 3 -r 1 -z 1 "$@"
