#!/usr/bin/env bash
# Issue 14 (the redesign): on one GPU, in one call,
#  1. llmpy bench --model d12 -b 64 (T=1024, -d 524288, -r 0) for the new code and for the code before the redesign
#     (commit 35fe5f7, copied into .devcarry/old_src), alternating, twice each;
#  2. llmpy bench --check (the compiled bf16 fused-loss fast path against eager fp32) with the new code;
#  3. the step under torch.cuda.set_sync_debug_mode("error"): queued steps must make no host sync;
#  4. a real `llmpy train` run against its bench (the same -b, -r);
#  5. checkpoint and resume on CUDA (the optimizer's LR tensor through torch.distributed.checkpoint's helpers), and a
#     resume that changes -l, which must be refused.
# Usage on the device: carry .devcarry; OUT=... bash benchmarks/gpu_architecture_check.sh
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
J="$OUT/bench.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
b() {  # $1: source tree; the rest: bench flags
  local tree=$1; shift
  echo "=== bench ($tree) $*"
  PYTHONPATH=$tree timeout 300 python -m llmpy bench --model d12 -t 1024 -d 524288 --steps ${STEPS:-12} --warmup 3 \
    --json "$J" "$@" 2>&1 | grep -v "^USDT" | tail -2 | cut -c1-220
}
b src -b 64 -r 0
b .devcarry/old_src -b 64 -r 0
b src -b 64 -r 0
b .devcarry/old_src -b 64 -r 0
echo "=== bench --check (new)"
PYTHONPATH=src timeout 300 python -m llmpy bench --check --model d12 -b 8 -t 1024 -r 0 --json "$OUT/check.jsonl" 2>&1 \
  | grep -v "^USDT" | tail -2 | cut -c1-600
echo "=== sync debug mode: queued steps make no host sync"
PYTHONPATH=src timeout 300 python - <<'PY'
import tempfile, warnings
from pathlib import Path
import numpy as np, torch
from llmpy.config import TrainConfig
from llmpy.data.shards import write_shard
from llmpy.train.build import build_trainer
from llmpy.train.step import MetricsQueue
tmp = Path(tempfile.mkdtemp())
write_shard(tmp / "s_train_000001.bin", np.random.default_rng(0).integers(0, 50257, 200_000))
config = TrainConfig(train_data=str(tmp / "s_train_*.bin"), model="d12", batch_size=8, seq_len=1024,
                     total_batch_size=16384, max_steps=20, val_every=0, sample_every=0, log_every=0, recompute=0,
                     skip_loss_zscore=3.0, skip_grad_zscore=3.0, auto_batch=0)
trainer = build_trainer(config)
queue = MetricsQueue(trainer.train_step.clock)
for step in range(3):  # compile and allocate first
    queue.put(trainer.train_step(step))
print("warm-up:", [f"{s.loss:.4f}" for s in queue.drain()])
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("error")
try:
    for step in range(3, 8):
        queue.put(trainer.train_step(step))
    print("OK: 5 queued steps made no host sync under set_sync_debug_mode('error')")
except RuntimeError as exc:
    print("SYNC FOUND:", str(exc).splitlines()[0])
finally:
    torch.cuda.set_sync_debug_mode(0)
stats = queue.drain()
print("steps", [s.step for s in stats], "losses", [f"{s.loss:.4f}" for s in stats], "ms",
      [f"{1000 * s.seconds:.1f}" for s in stats])
PY
echo "=== real llmpy train vs its bench (new code), random-token shards"
PYTHONPATH=src python - <<'PY'
import os
import numpy as np
from llmpy.data.shards import write_shard
os.makedirs("/tmp/rt", exist_ok=True)
rng = np.random.default_rng(0)
for i in (1, 2):
    write_shard(f"/tmp/rt/rt_train_{i:06d}.bin", rng.integers(0, 50257, 10_000_000))
PY
PYTHONPATH=src timeout 300 python -m llmpy train -i '/tmp/rt/rt_train_*.bin' -o "$OUT/train_d12" -e d12 \
  -b 64 -t 1024 -d 524288 -x 16 -r 0 -v 0 -s 0 -l 0.0006 -u 10 -c 0.1 --log-every 5 2>&1 | grep -v "^USDT" | tail -6
echo "=== resume on CUDA"
rm -rf /tmp/rs && PYTHONPATH=src python -m llmpy train -i '/tmp/rt/rt_train_*.bin' -o /tmp/rs -e d2w64 -b 4 -t 64 \
  -d 512 -x 6 -n 3 -v 0 -s 0 -l 0.001 -u 2 --compile 0 --log-every 3 2>&1 | grep -v "^USDT" | tail -2
PYTHONPATH=src python -m llmpy train -i '/tmp/rt/rt_train_*.bin' -o /tmp/rs -e d2w64 -b 4 -t 64 \
  -d 512 -x 8 -n 3 -v 0 -s 0 -l 0.001 -u 2 --compile 0 --log-every 1 -y 1 2>&1 | grep -v "^USDT" | tail -5; echo "rc=$?"
PYTHONPATH=src python -m llmpy train -i '/tmp/rt/rt_train_*.bin' -o /tmp/rs -e d2w64 -b 4 -t 64 \
  -d 512 -x 10 -n 3 -v 0 -s 0 -l 0.002 -u 2 --compile 0 -y 1 2>&1 | grep -v "^USDT" | tail -1
python - "$J" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("summary: tok/s per bench run in order (new, old, new, old):", [round(r["tokens_per_sec"]) for r in rows])
PY
