# Sourced by device-call scripts (benchmarks/gpu_next_call.sh): FA4 from .fa4/ onto PYTHONPATH, and
#   run NAME LIMIT [VAR=value ...] -- bench arguments
# which runs one `llmpy bench` with the deadline respected, appends its output to $log and prints one line.
# Needs: out (folder for bench.jsonl), log (the call's one log file), deadline (seconds for the whole call).
mkdir -p "$out"
if [ -f .fa4/install.sh ] && bash .fa4/install.sh >>"$log" 2>&1; then
    export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages:${PYTHONPATH:-}
fi
echo "fa4 install t=${SECONDS}s: $(tail -1 "$log")"
left() { local l=$1; [ "$l" -lt $((deadline - SECONDS)) ] || l=$((deadline - SECONDS)); echo "$l"; }
run() {
    local name=$1 limit=$2
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    [ "$SECONDS" -lt $((deadline - 40)) ] || { echo "$name skipped (deadline)"; return; }
    echo "=== $name: ${envs[*]} bench $*" >>"$log"
    env "${envs[@]}" timeout "$(left "$limit")" python -m llmpy bench -d 524288 "$@" --json "$out/bench.jsonl" >/tmp/run.txt 2>&1
    local rc=$?
    cat /tmp/run.txt >>"$log"
    echo "$name rc=$rc t=${SECONDS}s | $(grep -E '^device|tok/s|PASS|FAIL|rror|arn' /tmp/run.txt | tail -3 | cut -c1-300 | tr '\n' ' ')"
}
