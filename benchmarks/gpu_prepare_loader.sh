#!/usr/bin/env bash
# Device run for the data issue: `llmpy prepare fineweb --input` throughput by worker count on the 16-core GPU host,
# then a d12 training run on the shuffled loader to compare the loader's host time per step with the step time.
# Needs .devcarry/{gpt2.tiktoken,corpus_gz/*.jsonl.gz} and .whl/ (datasets, dill, multiprocess wheels).
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=src:/tmp/site LLMPY_GPT2_BPE=.devcarry/gpt2.tiktoken PYTHONUNBUFFERED=1
python3 -c "import datasets, pyarrow, os; print('datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'cores', os.cpu_count())"
for w in 1 4 8 15; do
  start=$(date +%s.%N)
  python3 -m llmpy prepare fineweb --input .devcarry/corpus_gz/train_*.jsonl.gz --out /tmp/fw$w --workers $w \
    --shard-size 2000000 --quiet | tail -1
  end=$(date +%s.%N)
  python3 -c "print('workers=$w seconds=%.2f tok/s=%.0f' % ($end-$start, 15621792/($end-$start)))"
done
for f in /tmp/fw1/*.bin; do cmp "$f" "/tmp/fw15/$(basename $f)" || echo "DIFFERENT $f"; done; echo "compared 1 vs 15 workers"
python3 -m llmpy train -i "/tmp/fw15/fineweb_train_*.bin" -e d12 -b 64 -t 1024 -d 524288 -x 25 -v 0 -s 0 \
  -o "$OUT/shuffled" --log-every 5
python3 - "$OUT/shuffled/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kind": "train"' in l][1:]
print("loader host ms per step: median %.2f max %.2f | step ms median %.1f | tok/s median %.0f" % (
    statistics.median(r["data_ms"] for r in rows), max(r["data_ms"] for r in rows),
    statistics.median(r["step_ms"] for r in rows), statistics.median(r["tokens_per_sec"] for r in rows)))
PY
