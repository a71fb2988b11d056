#!/usr/bin/env bash
# Issue 7 (and 6's "world size 1 costs nothing"): llmpy bench variants for GPT-2 124M (d12) at T=1024,
# -d 524288, on one GPU; then a real `llmpy train` run of the best variant on random-token shards.
# Usage on the device: OUT=... bash benchmarks/gpu_bench_d12.sh
set -u
export PYTHONPATH=src NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
J="$OUT/bench.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
b() {  # one bench; a failure is logged and the script goes on
  echo "=== bench $*"
  timeout 300 python -m llmpy bench --model d12 -t 1024 -d 524288 --steps ${STEPS:-10} --warmup 3 --json "$J" "$@" \
    2>&1 | grep -v "^USDT" | tail -${TAILN:-3}
}
b -b 32 -r 0
b -b 32 -r 1
b -b 32 -r 0 --attention cudnn
b -b 64 -r 0
b -b 16 -r 0
TAILN=14 b -b 32 -r 0 --profile "$OUT/prof" --profile-steps 1
echo "=== torchrun, world size 1, -z 0 (same code path as a plain process)"
timeout 300 torchrun --standalone --nproc_per_node=1 -m llmpy bench --model d12 -b 32 -t 1024 -d 524288 \
  --steps 10 --warmup 3 -r 0 --json "$J" 2>&1 | grep -v "^USDT" | tail -2
echo "=== train: real llmpy train, same config, random-token shards"
python - <<'PY'
import numpy as np
from llmpy.data.shards import write_shard
rng = np.random.default_rng(0)
write_shard("/tmp/rt/rt_val_000000.bin", rng.integers(0, 50257, 2_000_000)) if __import__("os").makedirs("/tmp/rt", exist_ok=True) is None else None
for i in (1, 2):
    write_shard(f"/tmp/rt/rt_train_{i:06d}.bin", rng.integers(0, 50257, 10_000_000))
PY
timeout 300 python -m llmpy train -i '/tmp/rt/rt_train_*.bin' -j '/tmp/rt/rt_val_*.bin' -o "$OUT/train_d12" -e d12 \
  -b 32 -t 1024 -d 524288 -x 25 -r 0 -v 0 -s 0 -l 0.0006 -u 10 -c 0.1 --log-every 5 2>&1 | grep -v "^USDT" | tail -12
