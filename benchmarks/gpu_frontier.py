"""Issue 27 on one GPU: the frontier recipe against today's modern one on the shared corpus, in named suites, each
sized for one device call (10 minutes). Runs `llmpy train` and `llmpy bench` in this one process (CUDA starts once).

    python benchmarks/gpu_frontier.py stage           # on the CPU machine, once: the corpus gz files into .devcarry/
    python benchmarks/gpu_frontier.py SUITE[,SUITE...] [--out DIR] [--part I/N] [--only NAME,...] [--steps N]
                                      [--budget-s S] [--dry-run] [--smoke]
    python benchmarks/gpu_frontier.py table FILE.json ...   # the reports again, from the JSON files of earlier calls

Suites (every train run: d12, -b 64 -t 1024 -d 65536, compiled, -r 0, --no-shuffle, val over the first 10 val
batches of 64 x 1024 = 655,360 tokens, as benchmarks/RESULTS.md's "The modern recipe"):
- `matched`: modern for 300 and 100 steps, frontier for 150 and 50, each schedule set to its own -x, val every 10
  steps; prints the two `matched budgets:` lines for benchmarks/RESULTS.md. Each compared pair runs in one --part.
- `ablation`: at --steps (150): frontier with each of its techniques off (ARCH_SWITCHES), frontier with each
  technique it leaves off turned on (FRONTIER_EXTRAS), then modern with each of ARCH_SWITCHES on; val at the end;
  prints a markdown table. A variant the installed llmpy does not take is skipped with a message; a part whose
  variants' base is elsewhere runs that base first.
- `speed`: `llmpy bench -e d12 -b 64 -t 1024 -d 524288 -r 0` of classic, modern and frontier, then `bench --check`
  of frontier.
Training seconds: the logged step times (evaluations excluded), the first step (torch.compile) counted at the median
step time and its excess reported as compile_s (train_runs.summary). tok/s: tokens after the first step / their time.
Results: DIR/SUITE[_partI].json (rewritten after every run) and DIR/runs_SUITE[_partI].tar.gz (each run's
metrics.jsonl and main.log). The corpus is prepared from --corpus-gz with `llmpy prepare text` as in
benchmarks/RESULTS.md (15,621,792 train / 1,083,700 val tokens; other counts stop the call) unless --data is given.
`--smoke`: the same plumbing on the CPU with a 2-layer model, steps / 50 (tests/test_gpu_frontier_driver.py).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import glob
import json
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(Path(__file__).resolve().parent)]  # this checkout's llmpy, train_runs

from train_runs import D12_65K, corpus_flags, refusal, summary, train  # noqa: E402

START = time.monotonic()

# ---------------------------------------------------------------------------------------------- the tables to edit
MATCHED = [("modern_300", "modern", 300), ("frontier_150", "frontier", 150),  # (name, recipe, steps = -x)
           ("modern_100", "modern", 100), ("frontier_50", "frontier", 50)]
COMPARED = [("frontier_150", "modern_300"), ("frontier_50", "modern_100")]  # the RESULTS.md lines; a pair per call
# --arch switches of issue 27, with the value that turns each on in `modern` when the frontier recipe gives none (the
# recipe's other switches, off by default: e.g. "backout": "1", "key_offset": "1", "untie_at": "0.667")
ARCH_SWITCHES = {"bigram": "5", "smear": "1", "sigmoid_cap": "23", "attn_gate": "1", "ve_gate": "1", "skip_gate": "1"}
ARCH_OFF = {"sigmoid_cap": "sigmoid_cap=0,softcap=15"}  # off: back to modern's 15 tanh(l / 15), not uncapped
# (name, flags): techniques the frontier recipe leaves off, each run on top of it ("frontier+NAME"), to decide
# whether the recipe should take it. --arch and --optimizer-args values are merged into the recipe's own; a flag
# the installed llmpy does not take is skipped. Batch stages: -b 32 micro-steps of 32,768 tokens, stages of 1, 2 and 3
# of them (32K, 64K, 98K tokens; 65,536 per step on average over the run), LR x (stage / first)^0.5.
FRONTIER_EXTRAS = [
    ("cautious_wd", ["--optimizer-args", "cautious_wd=1,wd_schedule=lr2", "-c", "1.2"]),  # the speedrun's wd, lr^2
    ("normuon", ["--optimizer-args", "normuon=1,normuon_axis=auto,normuon_beta=0.9"]),
    ("qk_pairs", ["--optimizer-args", "qk_pairs=1"]),
    ("untie", ["--arch", "untie_at=0.667"]),
    ("backout", ["--arch", "backout=1"]),
    ("key_offset", ["--arch", "rope_dims=32,key_offset=1"]),  # d12: heads of 64, half of them turn
    ("batch_stages", ["-b", "32", "-d", "98304", "--batch-stages", "1,2,3", "--batch-stages-lr-power", "0.5"]),
    ("mtp", ["--mtp-weights", "0.5,0.25"]),
    ("prefix_loss", ["--prefix-loss", "0.25"]),
]
SPEED = [("bench_classic", "classic"), ("bench_modern", "modern"), ("bench_frontier", "frontier")]
CHECK = ("check_frontier", "frontier")
# for --budget-s and --dry-run: d12 on an H100/H200 (benchmarks/RESULTS.md; frontier's is a guess until measured)
TOK_PER_S = {"classic": 540_000, "modern": 480_000, "frontier": 400_000}
COMPILE_S, OVERHEAD_S, EVAL_S, CHECK_S = 30.0, 8.0, 0.7, 70.0
CORPUS_TOKENS = {"train": 15_621_792, "val": 1_083_700}
CORPUS_GZ, TOKENIZER = ".devcarry/corpus_all", ".devcarry/gpt2.tiktoken"


@dataclass(frozen=True)
class Size:
    """What one suite's runs share: the model and batch flags, the tokens of a step, how often val runs."""

    train: tuple[str, ...]
    bench: tuple[str, ...]
    check: tuple[str, ...]
    tokens_per_step: int
    val_every: int
    step_divisor: int  # steps of the tables divided by this
    estimate: bool  # time estimates and the --budget-s deadline apply


REAL = Size(tuple(D12_65K), ("-e", "d12", "-b", "64", "-t", "1024", "-d", "524288", "-r", "0", "--steps", "10",
                             "--warmup", "3"), ("-e", "d12", "-b", "8", "-t", "1024", "-r", "0"), 65536, 10, 1, True)
SMOKE = Size(("-e", "d2w64", "-b", "4", "-t", "32", "-d", "128", "-r", "0", "-s", "0", "--no-shuffle", "-m", "2",
              "--log-every", "1", "--device", "cpu", "--compile", "0"),
             ("-e", "d2w64", "-b", "2", "-t", "32", "-r", "0", "--steps", "2", "--warmup", "1", "--device", "cpu",
              "--compile", "0"), ("-e", "d2w64", "-b", "2", "-t", "32", "--device", "cpu"), 128, 1, 50, False)


@dataclass
class Run:
    """One `llmpy train` or `llmpy bench` of a suite; `argv` follows the command, without -o / --json."""

    name: str
    command: str
    argv: list[str]
    recipe: str
    steps: int = 0
    base: str | None = None  # ablation: the run it is compared with
    group: str = ""  # runs that share a call under --part
    together: bool = False  # the group starts only if the whole of it fits in --budget-s (a compared pair)
    est_s: float = 0.0
    change: str = ""  # ablation: what differs from the base
    on_argv: list[str] | None = None  # ablation, a technique off: the base with it on (the base must equal it)

    def shell(self, where: str) -> str:
        target = ["-o", f"{where}/{self.name}"] if self.command == "train" else ["--json", f"{where}/bench.jsonl"]
        return shlex.join(["python", "-m", "llmpy", self.command, *self.argv, *target])


# ------------------------------------------------------------------------------------------------- building runs

def settings(text: str) -> dict[str, str]:
    """'a=1,b=2' -> {'a': '1', 'b': '2'}, in order."""
    return dict(item.split("=", 1) for item in filter(None, (p.strip() for p in text.split(","))) if "=" in item)


def recipe_value(recipe: str, field_name: str) -> str:
    """The recipe's own value of a TrainConfig string field ("" when the recipe or the field is not there)."""
    from llmpy.recipes import RECIPES

    return str(RECIPES.get(recipe, {}).get(field_name, ""))


def merged(recipe: str, flags: list[str]) -> list[str]:
    """`flags` with the values of --arch and --optimizer-args merged into the recipe's own: the command names every
    setting the run has, whether or not the installed llmpy merges a recipe's string with the flag's."""
    out = list(flags)
    for flag, field_name in (("--arch", "arch"), ("--optimizer-args", "optimizer_args")):
        if flag in out:
            at = out.index(flag) + 1
            values = {**settings(recipe_value(recipe, field_name)), **settings(out[at])}
            out[at] = ",".join(f"{k}={v}" for k, v in values.items())
    return out


def on_value(switch: str) -> str:
    """The value that turns an --arch switch on: the frontier recipe's, else ARCH_SWITCHES'."""
    value = settings(recipe_value("frontier", "arch")).get(switch, "0")
    return ARCH_SWITCHES[switch] if value in ("0", "0.0", "") else value


def estimate(size: Size, command: str, recipe: str, steps: int, evals: int) -> float:
    """Seconds a run takes on one H100/H200, compilation and evaluations included (0 when not estimated)."""
    if not size.estimate:
        return 0.0
    if command == "check":
        return CHECK_S
    tokens = steps * (size.tokens_per_step if command == "train" else 524_288)
    return tokens / TOK_PER_S.get(recipe, TOK_PER_S["frontier"]) + COMPILE_S + OVERHEAD_S + evals * EVAL_S


def matched_runs(size: Size, data: list[str]) -> list[Run]:
    runs = []
    for name, recipe, steps in MATCHED:
        n = max(1, steps // size.step_divisor)
        every = min(size.val_every, n)
        group = next((f"pair{i}" for i, pair in enumerate(COMPARED) if name in pair), name)
        argv = [*data, *size.train, "--recipe", recipe, "-x", str(n), "-v", str(every)]
        runs.append(Run(name, "train", argv, recipe, n, group=group, together=True,
                        est_s=estimate(size, "train", recipe, n, n // every + 1)))
    return runs


def ablation_runs(size: Size, data: list[str], steps: int) -> list[Run]:
    n = max(1, steps // size.step_divisor)

    def run(name: str, recipe: str, change: list[str], base: str | None = None, on: list[str] | None = None) -> Run:
        argv = [*data, *size.train, "--recipe", recipe, "-x", str(n), "-v", str(n)]
        flags = merged(recipe, change)
        on_argv = None if on is None else argv + merged(recipe, on)
        return Run(name, "train", argv + flags, recipe, n, base=base, group=recipe, change=shlex.join(flags),
                   est_s=estimate(size, "train", recipe, n, 2), on_argv=on_argv)

    switches = [(name, ["--arch", f"{name}={on_value(name)}"], ["--arch", ARCH_OFF.get(name, f"{name}=0")])
                for name in ARCH_SWITCHES]
    runs = [run("frontier", "frontier", [])]
    runs += [run(f"frontier-{name}", "frontier", off, "frontier", on) for name, on, off in switches]
    runs += [run(f"frontier+{name}", "frontier", flags, "frontier") for name, flags in FRONTIER_EXTRAS]
    runs.append(run("modern", "modern", []))
    return runs + [run(f"modern+{name}", "modern", on, "modern") for name, on, _ in switches]


def speed_runs(size: Size) -> list[Run]:
    runs = [Run(name, "bench", [*size.bench, "--recipe", recipe], recipe, est_s=estimate(size, "bench", recipe, 13, 0))
            for name, recipe in SPEED]
    name, recipe = CHECK
    return runs + [Run(name, "bench", ["--check", *size.check, "--recipe", recipe], recipe,
                       est_s=estimate(size, "check", recipe, 0, 0))]


# ---------------------------------------------------------------------------------------- checks, parts, deadline

def resolved(argv: list[str]):
    """(TrainConfig without its --arch string, the model config it builds) of a train command, or None."""
    import dataclasses

    from llmpy.cli import build_parser
    from llmpy.families import model_config
    from llmpy.flags import train_config_from_args

    try:
        config = train_config_from_args(build_parser().parse_args(["train", *argv]))
        return dataclasses.replace(config, arch=""), model_config(config.family, config.model, config.arch)
    except Exception:  # refusal() says why
        return None


def screen(runs: list[Run]) -> tuple[list[Run], list[dict]]:
    """The runs the installed llmpy takes, and a record for each one it does not (or that repeats its base)."""
    kept, skipped = [], []
    bases = {run.name: run for run in runs if run.base is None}
    for run in runs:
        reason = refusal([run.command, *run.argv])
        if reason is None and run.base in bases:  # a technique its base does not have on, or has on already
            base = resolved(bases[run.base].argv)
            if run.on_argv is not None and resolved(run.on_argv) != base:
                reason = f"the {run.base} recipe does not turn it on"
            elif run.on_argv is None and resolved(run.argv) == base:
                reason = f"the {run.base} recipe has it on already"
        if reason is None:
            kept.append(run)
        else:
            print(f"skip {run.name}: {reason}", flush=True)
            skipped.append({"name": run.name, "skipped": reason, "flags": shlex.join(run.argv)})
    return kept, skipped


def part_of(runs: list[Run], part: int, parts: int) -> list[Run]:
    """The part-th of `parts` contiguous pieces of `runs` of about equal estimated time, each group whole when there
    are at least `parts` groups, with the bases its variants are compared with put first where they fall elsewhere."""
    groups: list[list[Run]] = []
    for run in runs:
        if groups and run.group and groups[-1][0].group == run.group:
            groups[-1].append(run)
        else:
            groups.append([run])
    if len(groups) < parts:
        groups = [[run] for run in runs]
    weights = [sum(max(r.est_s, 1.0) for r in g) for g in groups]
    total, done, chosen = max(sum(weights), 1.0), 0.0, []
    for group, weight in zip(groups, weights):
        if min(parts - 1, int((done + weight / 2) / total * parts)) == part - 1:
            chosen += group
        done += weight
    names = {r.name for r in chosen}
    bases = [r for r in runs if r.name in {c.base for c in chosen} - names]
    return bases + chosen


# ------------------------------------------------------------------------------------------------------- running

def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")  # `date -u +%F`


def execute(run: Run, scratch: Path) -> dict:
    """Run one train or bench in this process; its result record (rc, wall seconds, summary or bench result)."""
    import torch

    from llmpy.cli import main

    record = {"name": run.name, "recipe": run.recipe, "max_steps": run.steps, "base": run.base, "change": run.change,
              "flags": shlex.join(run.argv), "est_s": round(run.est_s)}
    start = time.time()
    where = scratch / run.name
    print(f"=== {run.name}: {run.shell(str(scratch))}", flush=True)
    try:
        if run.command == "train":
            record["rc"] = train([*run.argv, "-o", str(where)])
        else:
            where.mkdir(parents=True, exist_ok=True)
            record["rc"] = main(["bench", *run.argv, "--json", str(where / "bench.jsonl")])
    except Exception as exc:  # a crash of one run (out of memory, a compiler error) is recorded; the next one runs
        import traceback

        traceback.print_exc(file=sys.stdout)
        record.update(rc=1, error=f"{type(exc).__name__}: {exc}"[:500])
    record["wall_s"] = round(time.time() - start, 1)
    if (where / "metrics.jsonl").is_file():
        record.update(summary(where))
    if (where / "bench.jsonl").is_file():
        lines = (where / "bench.jsonl").read_text().splitlines()
        record["bench"] = json.loads(lines[-1]) if lines else None
        if record["bench"] and "tokens_per_sec" in record["bench"]:
            record["tok_per_s"] = round(record["bench"]["tokens_per_sec"])
    torch._dynamo.reset()  # a fresh compiler state per run (see gpu_modern_runs.py)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"RESULT {run.name} rc={record['rc']} wall={record['wall_s']} s est={record['est_s']} s "
          f"final_val={record.get('final_val')} train_s={record.get('train_s')} tok/s={record.get('tok_per_s')}",
          flush=True)
    return record


def save(out: Path, stem: str, payload: dict, scratch: Path) -> None:
    """The suite's JSON, and its runs' logs as one tar (a device call brings back only a few files)."""
    tmp = out / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(out / f"{stem}.json")
    with tarfile.open(out / f"runs_{stem}.tar.gz", "w:gz") as tar:
        for run in payload["runs"]:
            for name in ("metrics.jsonl", "main.log", "bench.jsonl"):
                path = scratch / run["name"] / name
                if path.is_file():
                    tar.add(path, arcname=f"{run['name']}/{name}")


def run_suite(suite: str, runs: list[Run], skipped: list[dict], args, context: dict) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix=f"frontier_{suite}_"))
    stem = suite if args.parts == 1 else f"{suite}_part{args.part}"
    payload = {"suite": suite, "part": f"{args.part}/{args.parts}", **context, "runs": list(skipped)}
    for i, run in enumerate(runs):
        left = args.budget_s - (time.monotonic() - START)
        starts_group = run.together and (i == 0 or runs[i - 1].group != run.group)
        need = sum(r.est_s for r in runs[i:] if r.group == run.group) if starts_group else run.est_s
        done_so_far = {r["name"] for r in payload["runs"] if "rc" in r}
        if need > left or (run.together and not starts_group and runs[i - 1].name not in done_so_far):
            print(f"skip {run.name}: estimated {need:.0f} s, {left:.0f} s of --budget-s left", flush=True)
            payload["runs"].append({"name": run.name, "skipped": f"deadline (estimated {need:.0f} s, "
                                                                  f"{left:.0f} s left)", "flags": shlex.join(run.argv)})
            continue
        payload["runs"].append(execute(run, scratch))
        save(args.out, stem, payload, scratch)
    save(args.out, stem, payload, scratch)
    print(REPORTS[suite](payload), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return payload


# ------------------------------------------------------------------------------------------------------- reports

def by_name(payload: dict) -> dict:
    return {r["name"]: r for r in payload["runs"] if "skipped" not in r}


def matched_report(payload: dict) -> str:
    """The two RESULTS.md lines (from runs of one call), the verdicts against issue 27's target, a table."""
    runs, lines = by_name(payload), []
    for new, old in COMPARED:
        a, b = runs.get(new), runs.get(old)
        if not (a and b and a.get("final_val") and b.get("final_val")):
            lines.append(f"matched budgets: {new} vs {old}: not both measured in this call")
            continue
        lines.append(f"matched budgets: {budget(a)} vs {budget(b)} ({payload['gpu']}, {payload['date']})")
        lines.append(f"  target: val {'met' if a['final_val'][1] <= b['final_val'][1] else 'NOT met'} "
                     f"({a['final_val'][1] - b['final_val'][1]:+.3f}); time "
                     f"{'met' if a['train_s'] <= b['train_s'] / 2 else 'NOT met'} ({a['train_s'] / b['train_s']:.2f} "
                     f"of {old}'s; compile apart: {a['compile_s']} s vs {b['compile_s']} s)")
    lines += ["", "| run | val loss at its val steps | training s | compile s | tok/s | slow steps |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in runs.values():
        val = " / ".join(f"{s}: {v:.3f}" for s, v in sorted((int(k), v) for k, v in r.get("val", {}).items()))
        lines.append(f"| {r['name']} | {val} | {r.get('train_s')} | {r.get('compile_s')} | {r.get('tok_per_s')} | "
                     f"{len(r.get('slow_steps', []))} |")
    return "\n".join(lines + skipped_lines(payload))


def budget(run: dict) -> str:
    """'RECIPE STEPS steps VAL in SECONDS s' of one run, as issue 27's RESULTS.md line has it."""
    return f"{run['recipe']} {run['max_steps']} steps {run['final_val'][1]:.3f} in {run['train_s']:.1f} s"


def ablation_report(payload: dict) -> str:
    """Markdown: each variant's final val loss and tok/s against its base's in the same call."""
    runs = by_name(payload)
    steps = next((r["max_steps"] for r in runs.values()), "?")
    lines = [f"| run | change (flags added to its recipe) | val@{steps} | vs its base | tok/s | tok/s vs base |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in runs.values():
        base = runs.get(r["base"]) if r.get("base") else None
        val = r["final_val"][1] if r.get("final_val") else None
        delta = f"{val - base['final_val'][1]:+.3f}" if val is not None and base and base.get("final_val") else "-"
        speed = (f"{r['tok_per_s'] / base['tok_per_s']:.3f}x" if r.get("tok_per_s") and base and base.get("tok_per_s")
                 else "-")
        shown = f"{val:.3f}" if val is not None else f"rc={r.get('rc')}"
        lines.append(f"| {r['name']} | `{r.get('change') or '(the recipe)'}` | {shown} | {delta} | "
                     f"{r.get('tok_per_s') or '-'} | {speed} |")
    return "\n".join(lines + skipped_lines(payload))


def speed_report(payload: dict) -> str:
    lines = ["| run | tok/s | ms/step | MFU | peak GiB | check |", "| --- | --- | --- | --- | --- | --- |"]
    for r in by_name(payload).values():
        bench = r.get("bench") or {}
        step = bench.get("step_ms_median")
        check = bench["passed"] if "passed" in bench else "-" if r["rc"] == 0 else f"rc={r['rc']}"
        lines.append(f"| {r['name']} | {r.get('tok_per_s', '-')} | {f'{step:.1f}' if step else '-'} | "
                     f"{bench.get('mfu') or '-'} | {bench.get('peak_memory_gib') or '-'} | {check} |")
    return "\n".join(lines + skipped_lines(payload))


def skipped_lines(payload: dict) -> list[str]:
    return [f"skipped {r['name']}: {r['skipped']}" for r in payload["runs"] if "skipped" in r]


REPORTS = {"matched": matched_report, "ablation": ablation_report, "speed": speed_report}


# ------------------------------------------------------------------------------------------------- data and main

def stage(shared: Path) -> None:
    """Copy the shared corpus's gz files and the GPT-2 BPE into .devcarry/ (git-ignored), for `carry`."""
    target = ROOT / CORPUS_GZ
    target.mkdir(parents=True, exist_ok=True)
    files = sorted((shared / "corpus").glob("train_*.jsonl.gz")) + [shared / "corpus" / "val_00.jsonl.gz"]
    for path in files + [shared / "gpt2.tiktoken"]:
        if not path.is_file():
            sys.exit(f"stage: {path} is missing (--shared names the shared data folder)")
    for path in files:
        shutil.copyfile(path, target / path.name)
    if not (ROOT / TOKENIZER).is_file():
        shutil.copyfile(shared / "gpt2.tiktoken", ROOT / TOKENIZER)
    size = sum(p.stat().st_size for p in target.iterdir()) + (ROOT / TOKENIZER).stat().st_size
    print(f"staged {len(files)} files in {CORPUS_GZ} and {TOKENIZER}: {size / 2**20:.1f} MiB; "
          f"carry: [\"{CORPUS_GZ}\", \"{TOKENIZER}\"]")


def prepare(corpus_gz: Path, out: Path, exact: bool) -> dict:
    """`llmpy prepare text --name corpus` of the gz files into `out`, as benchmarks/RESULTS.md did, unless `out`
    holds a prepared corpus already; its token counts (`exact`: those of the shared corpus, else stop)."""
    from llmpy.cli import main

    if (out / "manifest.json").is_file():
        return check_counts(out, f"--data {out}", exact)
    train_files = sorted(glob.glob(str(corpus_gz / "train_*.jsonl.gz")))
    if not train_files or not (corpus_gz / "val_00.jsonl.gz").is_file():
        sys.exit(f"--corpus-gz {corpus_gz}: no train_*.jsonl.gz and val_00.jsonl.gz there "
                 "(run `python benchmarks/gpu_frontier.py stage` here and carry the folder)")
    code = main(["prepare", "text", "--input", *train_files, "--val-input", str(corpus_gz / "val_00.jsonl.gz"),
                 "--out", str(out), "--name", "corpus", "--quiet"])
    if code != 0:
        sys.exit(f"llmpy prepare text exited with {code}")
    return check_counts(out, f"--corpus-gz {corpus_gz}", exact)


def check_counts(corpus: Path, where: str, exact: bool) -> dict:
    counts = json.loads((corpus / "manifest.json").read_text())["total_tokens"]
    if exact and counts != CORPUS_TOKENS:
        sys.exit(f"{where}: {counts} tokens, not the shared corpus's {CORPUS_TOKENS}: the results would not "
                 "compare with benchmarks/RESULTS.md")
    return counts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suites", help="matched, ablation, speed (comma-separated), or stage, or table")
    parser.add_argument("files", nargs="*", help="table: the suite JSON files to report")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "frontier_out")),
                        help="folder for the results (default: $OUT, else ./frontier_out)")
    parser.add_argument("--part", default="1/1", help="I/N: run the I-th of N pieces of each suite (default 1/1)")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--steps", type=int, default=150, help="ablation: steps of every run (default 150)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip a run whose estimate passes this many seconds since the start (default: 560, "
                             "inside a 10-minute device call; none with --smoke)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and estimates, run nothing")
    parser.add_argument("--smoke", action="store_true", help="the same plumbing on the CPU at a tiny size")
    parser.add_argument("--corpus-gz", type=Path, default=ROOT / CORPUS_GZ, help=f"gz corpus (default {CORPUS_GZ})")
    parser.add_argument("--data", type=Path, default=None,
                        help="the prepared corpus's folder, prepared there unless it holds one (default: in $TMPDIR)")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / TOKENIZER, help=f"gpt2.tiktoken (default {TOKENIZER})")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="stage: shared data")
    args = parser.parse_args(argv)
    try:
        args.part, args.parts = (int(x) for x in args.part.split("/"))
        assert 1 <= args.part <= args.parts
    except (ValueError, AssertionError):
        parser.error(f"--part {args.part!r}: expected I/N with 1 <= I <= N")
    suites = args.suites.split(",")
    bad = [s for s in suites if s not in REPORTS] if suites not in (["stage"], ["table"]) else []
    if bad:
        parser.error(f"unknown suite {bad[0]!r}: use matched, ablation, speed, stage or table")
    if args.budget_s is None:
        args.budget_s = float("inf") if args.smoke or args.dry_run else 560.0
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.suites == "stage":
        stage(args.shared)
        return 0
    if args.suites == "table":
        for path in args.files:
            payload = json.loads(Path(path).read_text())
            print(f"## {path}\n{REPORTS[payload['suite']](payload)}\n")
        return 0
    sys.stdout.reconfigure(line_buffering=True)
    if args.tokenizer.is_file():
        os.environ.setdefault("LLMPY_GPT2_BPE", str(args.tokenizer))
    os.environ.setdefault("LLMPY_OFFLINE", "1")
    size = SMOKE if args.smoke else REAL
    suites = args.suites.split(",")
    corpus = args.data or Path(tempfile.gettempdir()) / ("frontier_corpus_smoke" if args.smoke else "frontier_corpus")
    data = corpus_flags(corpus)
    plans = {"matched": lambda: matched_runs(size, data), "ablation": lambda: ablation_runs(size, data, args.steps),
             "speed": lambda: speed_runs(size)}
    only = set(filter(None, args.only.split(",")))
    selected = {}
    for suite in suites:
        runs, skipped = screen([r for r in plans[suite]() if not only or r.name in only])
        selected[suite] = (part_of(runs, args.part, args.parts), skipped)
    if args.dry_run:
        for suite, (runs, skipped) in selected.items():
            print(f"# {suite} part {args.part}/{args.parts}: {len(runs)} runs, estimated "
                  f"{sum(r.est_s for r in runs):.0f} s on one H100/H200")
            for run in runs:
                print(f"{run.shell('$SCRATCH')}  # {run.name}, ~{run.est_s:.0f} s")
            for record in skipped:
                print(f"# skipped {record['name']}: {record['skipped']}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    context = {"gpu": gpu_name(), "date": today(), "argv": sys.argv, "torch": __import__("torch").__version__}
    if {"matched", "ablation"} & set(suites):
        context["corpus_tokens"] = prepare(args.corpus_gz, corpus, exact=not args.smoke)
        print(f"corpus: {context['corpus_tokens']} tokens in {corpus} (t={time.monotonic() - START:.0f} s)", flush=True)
    for suite in suites:
        run_suite(suite, *selected[suite], args, context)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
