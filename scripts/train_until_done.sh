#!/usr/bin/env bash
# The resume loop of llm.c's run scripts, for llmpy: launch `llmpy train` under torchrun until the run directory
# holds the DONE marker of the last step. A crash, a preemption (exit 75 after SIGTERM writes a checkpoint) or a lost
# node costs at most the steps since the last checkpoint (-n): the next launch resumes with -y 1.
#
#   scripts/train_until_done.sh OUT_DIR LAST_STEP [llmpy train flags...]
#
# Environment: NPROC (GPUs per node, default: all visible), NNODES (1), NODE_RANK (0), MASTER_ADDR/MASTER_PORT
# (rendezvous for several nodes), MAX_TRIES (20).
set -u
out_dir=$1; last_step=$2; shift 2
done_file=$(printf "%s/DONE_%08d" "$out_dir" "$last_step")
nproc=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$nproc" -ge 1 ] || nproc=1
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # no NVLink multicast (see docs/distributed.md)
rendezvous=(--standalone)
if [ "${NNODES:-1}" -gt 1 ]; then
  rendezvous=(--nnodes="$NNODES" --node-rank="${NODE_RANK:-0}" --rdzv-backend=c10d
              --rdzv-endpoint="${MASTER_ADDR:?set MASTER_ADDR to the first node}:${MASTER_PORT:-29500}"
              --rdzv-id="${RDZV_ID:-llmpy}")
fi
for try in $(seq 1 "${MAX_TRIES:-20}"); do
  if [ -f "$done_file" ]; then echo "done: $done_file"; exit 0; fi
  echo "launch $try: torchrun ${rendezvous[*]} --nproc_per_node=$nproc -m llmpy train -o $out_dir -y 1 $*"
  torchrun "${rendezvous[@]}" --nproc_per_node="$nproc" -m llmpy train -o "$out_dir" -y 1 "$@"
  status=$?
  if [ "$status" -ne 0 ] && [ "$status" -ne 75 ] && [ "$status" -ne 1 ]; then
    echo "llmpy train exited with $status (a configuration error, not a crash): not retrying" >&2
    exit "$status"
  fi
  sleep 1
done
[ -f "$done_file" ] || { echo "gave up after ${MAX_TRIES:-20} launches without $done_file" >&2; exit 1; }
