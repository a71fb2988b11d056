#!/usr/bin/env bash
# HellaSwag over all 10,042 examples and KV-cache sampling speed for a d12-sized model (weights from a 1-step run).
# Needs .devcarry/{gpt2.tiktoken,hellaswag_val.jsonl,corpus_gz/*.jsonl.gz} and .whl/ (datasets wheels).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=src:/tmp/site LLMPY_GPT2_BPE=.devcarry/gpt2.tiktoken PYTHONUNBUFFERED=1
python3 -m llmpy prepare fineweb --input .devcarry/corpus_gz/train_00.jsonl.gz --out /tmp/fw --shard-size 500000 --quiet | tail -1
python3 -m llmpy train -i "/tmp/fw/fineweb_train_*.bin" -o /tmp/run -e d12 -b 8 -t 1024 -x 1 -v 0 -s 0 --compile 0 | tail -2
for run in 1 2; do python3 -m llmpy eval --model /tmp/run --hellaswag-file .devcarry/hellaswag_val.jsonl --json; done
python3 - <<'PY'
import time, torch
from llmpy.convert.load import load_any_model
from llmpy.infer import generate
model = load_any_model("/tmp/run").cuda().eval()
prompt = torch.zeros(4, 8, dtype=torch.long, device="cuda")
auto = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
for n in (4, 1):
    generate(model, prompt[:n], 16, top_k=50, autocast=auto)
    torch.cuda.synchronize(); t = time.perf_counter()
    generate(model, prompt[:n], 512, top_k=50, autocast=auto)
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"KV-cache sampling, batch {n}: 512 new tokens in {dt:.2f} s = {1000 * dt / 512:.1f} ms per step")
PY
