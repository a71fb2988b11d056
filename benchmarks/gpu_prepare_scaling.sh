#!/usr/bin/env bash
# Tokenization throughput of `llmpy prepare fineweb --input` by worker count on the 16-core GPU host, on the shared
# corpus given 4 times (62.5M tokens) so worker start-up is a small part of the time.
# Needs .devcarry/{gpt2.tiktoken,corpus_gz/*.jsonl.gz} and .whl/ (datasets, dill, multiprocess wheels).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=src:/tmp/site LLMPY_GPT2_BPE=.devcarry/gpt2.tiktoken PYTHONUNBUFFERED=1
FILES=$(for i in 1 2 3 4; do echo .devcarry/corpus_gz/train_*.jsonl.gz; done)
for w in 1 2 4 8 15; do
  start=$(date +%s.%N)
  python3 -m llmpy prepare fineweb --input $FILES --out /tmp/fw$w --workers $w --quiet | tail -1
  end=$(date +%s.%N)
  python3 -c "print('workers=$w seconds=%.2f tok/s=%.0f' % ($end-$start, 4*15621792/($end-$start)))"
done
for f in /tmp/fw1/*.bin; do cmp "$f" "/tmp/fw15/$(basename $f)" || echo "DIFFERENT $f"; done; echo "compared 1 vs 15 workers"
