#!/usr/bin/env bash
# Device run for evaluation: HellaSwag inside training (-h 1) and standalone (`llmpy eval`) over all 10,042 examples
# for a d12-sized model, the llm.c bf16 export evaluated on the GPU, and KV-cache sampling speed.
# Needs .devcarry/{gpt2.tiktoken,hellaswag_val.jsonl,corpus_gz/*.jsonl.gz} and .whl/ (datasets wheels).
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=src:/tmp/site LLMPY_GPT2_BPE=.devcarry/gpt2.tiktoken PYTHONUNBUFFERED=1
HS=.devcarry/hellaswag_val.jsonl
python3 -m llmpy prepare fineweb --input .devcarry/corpus_gz/train_*.jsonl.gz --out /tmp/fw --shard-size 2000000 --quiet | tail -1
# 1. d12, 40 steps with HellaSwag (all examples) at steps 0, 20, 40 logged as llm.c eval lines
python3 -m llmpy train -i "/tmp/fw/fineweb_train_*.bin" -j "/tmp/fw/fineweb_val_*.bin" -o /tmp/run -e d12 -b 64 \
  -t 1024 -d 524288 -l 0.0006 -u 10 -x 40 -v 20 -m 10 -s 0 -h 1 --hellaswag-file $HS --log-every 10
grep -E "eval|tel" /tmp/run/main.log
# 2. standalone eval: val loss over 1,048,576 tokens + all of HellaSwag, timed
python3 -m llmpy eval --model /tmp/run -j "/tmp/fw/fineweb_val_*.bin" --val-tokens 1048576 --hellaswag-file $HS
python3 -m llmpy eval --model /tmp/run --hellaswag-file $HS --json
# 3. llm.c bf16 export, evaluated on the GPU
python3 -m llmpy convert --model /tmp/run --to llmc --dtype bf16 --out /tmp/gpt2_d12_bf16.bin
python3 -m llmpy eval --model /tmp/gpt2_d12_bf16.bin --hellaswag-file $HS --json
# 4. KV-cache sampling: 4 samples x 512 new tokens
/usr/bin/time -f "sample wall %e s" python3 -m llmpy sample --model /tmp/run --prompt "The meaning of life is" \
  --num-samples 4 --max-new-tokens 512 > $OUT/samples.txt
head -c 600 $OUT/samples.txt
