#!/usr/bin/env bash
# Issue 16's attention techniques on one H200, one device call each. Needs .devcarry/corpus (see
# benchmarks/RESULTS.md; or CORPUS=.devcarry/corpus_head, its first 2M/0.7M tokens, enough for 30 steps) and
# .devcarry/gpt2.tiktoken carried.
#   PYTHONPATH=src LLMPY_OFFLINE=1 LLMPY_GPT2_BPE=$PWD/.devcarry/gpt2.tiktoken bash benchmarks/gpu_attention_call.sh [STAGE]
# STAGE `checks` (call 1 of 2026-12-02): the classic d12 bench (against the 566-570K tok/s on record), the first
#   attention runs in one process, then `bench --check` of the classic path, of the modern model with the document
#   mask + window (compiled FlexAttention vs the eager dense mask) and with the FP8 head.
# STAGE `runs` (default): each 30-step run named in RUNS (default: what is still unmeasured) of
#   `gpu_modern_runs.py attention` in its own process (a CUDA fault ends only its run), then
#   benchmarks/gpu_flex_check.py (FlexAttention alone, each block-mask builder, inference and training,
#   CUDA_LAUNCH_BLOCKING=1) in what time is left. Call 2 of 2026-12-02 ran
#   RUNS="m30_win128 m30_fp8 m60_d32k m30_ramp10 m30_seqwarm5" (the last cut by the call's limit).
set -u
out="${OUT:-/tmp/out}"
deadline=${DEADLINE_S:-540}
mkdir -p "$out/attn"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
bench() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >"$out/$name.txt" 2>&1
    echo "$name rc=$? t=${SECONDS}s | $(grep -E 'tok/s|PASS|FAIL|rror' "$out/$name.txt" | tail -2 | tr '\n' ' ')"
}
if [ "${1:-runs}" = checks ]; then
    bench d12_b64 120 -e d12 -b 64 -r 0 --steps 10 --warmup 3
    BUDGET_S=270 python benchmarks/gpu_modern_runs.py attention "$out/attn" >"$out/attn.txt" 2>&1
    echo "attention rc=$? t=${SECONDS}s"; grep RESULT "$out/attn.txt"
    bench d12_check 70 --check -e d12 -b 8 -r 0
    bench modern_docwin_check 90 --check --recipe modern --arch doc_mask=1,window=128 -e d12 -b 8 -r 0
    bench modern_fp8_check 70 --check --recipe modern --arch fp8_head=1 -e d12 -b 8 -r 0
    exit 0
fi
# each run takes 85-130 s of wall time (process start, compiling the train and eval graphs, 30 steps, 7 evals, the
# checkpoint): about four fit in one call
for name in ${RUNS:-m30_doc m30_doc_flex m30_seqwarm5}; do
    [ "$SECONDS" -lt $((deadline - 60)) ] || { echo "$name skipped (deadline)"; continue; }
    timeout -k 10 $((deadline - SECONDS)) python benchmarks/gpu_modern_runs.py attention "$out/attn" "$name" \
        >"$out/attn_$name.txt" 2>&1
    echo "$name rc=$? t=${SECONDS}s | $(grep -E 'RESULT|rror' "$out/attn_$name.txt" | tail -1 | cut -c1-400)"
done
[ "$SECONDS" -lt $((deadline - 40)) ] && timeout -k 5 $((deadline - SECONDS)) \
    python benchmarks/gpu_flex_check.py "${CORPUS:-.devcarry/corpus}"/corpus_train_000001.bin
echo "done t=${SECONDS}s"
