#!/usr/bin/env bash
# GPT-2 1558M (d48) on FineWeb-Edu, 8 GPUs: the shape of llm.c's 1.5B reproduction (about 32B tokens as 32,000 steps
# of 1,048,576 tokens, lr 6e-4 decaying to 10%), with FSDP (-z 3) so parameters, gradients and optimizer state are
# sharded; -r 1 recomputes GELU. Several nodes: NNODES=2 NODE_RANK=... MASTER_ADDR=... on each (or scripts/slurm_multinode.sbatch).
# llmpy prepare fineweb --type edu --version 100B --out data/edu_fineweb100B
set -eu
DATA=${DATA:-data/edu_fineweb100B}
exec "$(dirname "$0")/train_until_done.sh" "${OUT:-log_gpt2_1558M}" 32000 \
  -i "$DATA/edu_fineweb_train_*.bin" -j "$DATA/edu_fineweb_val_*.bin" \
  -e d48 -b 16 -t 1024 -d 1048576 -x 32000 \
  -l 0.0006 -u 700 -q 0.1 -c 0.1 -k cosine \
  -v 250 -m 20 -h 1 -s 20000 -g 144 -n 2000 -nk 3 -r 1 -z 3 "$@"
