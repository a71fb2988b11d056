"""benchmarks/gpu_frontier.py, issue 27's device-call driver, on the CPU: the metrics summary against a hand
computation, the runs it builds (parsed by llmpy's own parser), what it skips, how it splits suites into calls, the
RESULTS.md lines, and one --smoke call end to end (prepare, train, bench, results files, reports)."""

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_frontier as gf  # noqa: E402
from train_runs import summary  # noqa: E402

DATA = ["-i", "d/corpus_train_*.bin", "-j", "d/corpus_val_*.bin"]


def write_metrics(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_summary_counts_training_seconds_as_results_md_does(tmp_path):
    step_ms, tokens = [5000, 100, 100, 700, 100], [100, 200, 200, 400, 400]
    records = [{"step": 0, "kind": "config", "device": "NVIDIA H100", "torch": "2.11"}]
    records += [{"step": s, "kind": "train", "loss": 9.0 - s, "grad_norm": 1.0, "step_ms": ms, "tokens": t}
                for s, (ms, t) in enumerate(zip(step_ms, tokens))]
    records += [{"step": s, "kind": "val", "loss": loss} for s, loss in ((0, 10.8), (2, 7.5), (5, 6.25))]
    write_metrics(tmp_path / "run", records)
    result = summary(tmp_path / "run")
    # by hand: median of the steps after the first = 0.1 s; the first counted at 0.1, its other 4.9 s is compile
    assert result["train_s"] == pytest.approx(0.1 + 0.1 + 0.1 + 0.7 + 0.1)
    assert result["compile_s"] == pytest.approx(4.9)
    assert result["train_s_after_first"] == pytest.approx(1.0)
    assert result["tok_per_s"] == 1200  # (200 + 200 + 400 + 400) tokens / 1.0 s
    assert result["slow_steps"] == [[3, 0.7]]  # more than 3 x the median: kept in train_s, listed
    assert result["val_tokens"] == {0: 0, 2: 300, 5: 1300}  # tokens trained before each val step
    assert result["val_seconds"] == {0: 0, 2: pytest.approx(0.2), 5: pytest.approx(1.1)}
    assert result["final_val"] == [5, 6.25] and result["tokens"] == 1300 and result["device"] == "NVIDIA H100"


def test_a_change_of_one_switch_keeps_the_recipe_others(monkeypatch):
    from llmpy import recipes

    monkeypatch.setitem(recipes.RECIPES, "r", {"arch": "a=1,b=2", "optimizer_args": "x=1"})
    assert gf.merged("r", ["-x", "3", "--arch", "b=0,c=4"]) == ["-x", "3", "--arch", "a=1,b=0,c=4"]
    assert gf.merged("r", ["--optimizer-args", "y=2"]) == ["--optimizer-args", "x=1,y=2"]
    assert gf.merged("modern", ["--mtp-weights", "0.5"]) == ["--mtp-weights", "0.5"]


def model_of(argv):
    import dataclasses

    return dataclasses.asdict(gf.resolved(argv)[1])


def test_each_ablation_variant_is_its_base_with_one_technique_changed():
    runs = {run.name: run for run in gf.ablation_runs(gf.REAL, DATA, 150)}
    frontier, modern = model_of(runs["frontier"].argv), model_of(runs["modern"].argv)
    for switch in gf.ARCH_SWITCHES:
        off, on = model_of(runs[f"frontier-{switch}"].argv), model_of(runs[f"modern+{switch}"].argv)
        changed = {k for k in frontier if frontier[k] != off[k]}
        assert float(off[switch]) == 0 and changed == ({switch, "softcap"} if switch == "sigmoid_cap" else {switch})
        assert {k for k in modern if modern[k] != on[k]} == {switch}
        assert on[switch] == frontier[switch]  # on at the frontier recipe's own value
    assert model_of(runs["frontier-sigmoid_cap"].argv)["softcap"] == model_of(runs["modern"].argv)["softcap"] == 15
    argv = shlex.split(runs["frontier-smear"].shell("s"))[3:]
    assert argv[argv.index("-x") + 1] == "150" and argv[argv.index("-v") + 1] == "150"


def run(name, argv, base=None, on=None, est=60.0, group=""):
    return gf.Run(name, "train", [*DATA, "-e", "d2w64", *argv], "modern", 3, base=base, on_argv=on, est_s=est,
                  group=group)


def test_screen_skips_what_llmpy_refuses_or_what_repeats_the_base(capsys):
    runs = [run("modern", ["--recipe", "modern"]),
            run("bad_flag", ["--recipe", "modern", "--no-such-flag", "1"], "modern"),
            run("bad_setting", ["--recipe", "modern", "--optimizer-args", "no_such_setting=1"], "modern"),
            run("bad_switch", ["--recipe", "modern", "--arch", "no_such_switch=1"], "modern"),
            run("same", ["--recipe", "modern", "--arch", "rotary=1"], "modern"),  # on in the recipe already
            run("not_on", ["--recipe", "modern", "--mtp-weights", ""], "modern",  # off in the recipe already
                on=[*DATA, "-e", "d2w64", "--recipe", "modern", "--mtp-weights", "0.5"]),
            run("good", ["--recipe", "modern", "--arch", "softcap=0"], "modern")]
    kept, skipped = gf.screen(runs)
    assert [r.name for r in kept] == ["modern", "good"]
    reasons = {r["name"]: r["skipped"] for r in skipped}
    assert "--no-such-flag" in reasons["bad_flag"] and "no_such_setting" in reasons["bad_setting"]
    assert "no_such_switch" in reasons["bad_switch"]
    assert reasons["same"] == "the modern recipe has it on already"
    assert reasons["not_on"] == "the modern recipe does not turn it on"
    assert "skip bad_flag:" in capsys.readouterr().out


def test_parts_keep_compared_pairs_together_and_bring_their_bases():
    matched = gf.matched_runs(gf.REAL, DATA)
    assert [r.name for r in gf.part_of(matched, 1, 2)] == ["modern_300", "frontier_150"]
    assert [r.name for r in gf.part_of(matched, 2, 2)] == ["modern_100", "frontier_50"]
    runs = [run("a", [], group="A"), *(run(f"a{i}", [], "a", group="A") for i in range(4)),
            run("b", [], group="B"), *(run(f"b{i}", [], "b", group="B") for i in range(4))]
    halves = [[r.name for r in gf.part_of(runs, i, 2)] for i in (1, 2)]
    assert halves == [["a", "a0", "a1", "a2", "a3"], ["b", "b0", "b1", "b2", "b3"]]
    thirds = [[r.name for r in gf.part_of(runs, i, 3)] for i in (1, 2, 3)]
    assert sorted(n for part in thirds for n in part if n not in ("a", "b")) == sorted(
        n for n in halves[0] + halves[1] if n not in ("a", "b"))  # each variant once
    for part in thirds:  # each with its variants' bases, first
        bases = {n[0] for n in part if len(n) > 1}
        assert [n for n in part[:len(bases)]] == sorted(bases) or bases <= set(part)


def test_a_compared_pair_starts_only_when_both_fit_the_budget(tmp_path, capsys):
    import argparse
    import time

    pair = gf.matched_runs(gf.REAL, DATA)[:2]  # modern_300 ~101 s and frontier_150 ~74 s, estimated
    elapsed = time.monotonic() - gf.START
    args = argparse.Namespace(out=tmp_path, part=1, parts=1, budget_s=elapsed + 150)  # room for one, not both
    payload = gf.run_suite("matched", pair, [], args, {"gpu": "g", "date": "d"})
    assert [r["skipped"].split(" (")[0] for r in payload["runs"]] == ["deadline", "deadline"]
    assert json.loads((tmp_path / "matched.json").read_text())["runs"] == payload["runs"]
    assert "frontier_150 vs modern_300: not both measured in this call" in capsys.readouterr().out


def test_the_results_lines_and_the_verdicts():
    runs = [{"name": "modern_300", "recipe": "modern", "max_steps": 300, "final_val": [300, 4.0964], "train_s": 39.68,
             "compile_s": 24.1, "val": {"0": 10.8, "300": 4.0964}},
            {"name": "frontier_150", "recipe": "frontier", "max_steps": 150, "final_val": [150, 4.0501],
             "train_s": 19.80, "compile_s": 31.0, "val": {"150": 4.0501}}]
    out = gf.matched_report({"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-12-09", "runs": runs}).splitlines()
    assert out[0] == ("matched budgets: frontier 150 steps 4.050 in 19.8 s vs modern 300 steps 4.096 in 39.7 s "
                      "(NVIDIA H100 80GB HBM3, 2026-12-09)")
    assert out[1].startswith("  target: val met (-0.046); time met (0.50 of modern_300's")  # 19.80 <= 39.68 / 2
    runs[1]["train_s"] = 19.90
    assert "time NOT met" in gf.matched_report({"gpu": "g", "date": "d", "runs": runs}).splitlines()[1]
    assert out[2] == "matched budgets: frontier_50 vs modern_100: not both measured in this call"


def test_a_corpus_other_than_the_shared_one_stops_a_real_call(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"total_tokens": {"val": 1_083_700, "train": 4_000_000}}))
    with pytest.raises(SystemExit, match="not the shared corpus's"):
        gf.prepare(tmp_path / "gz", tmp_path, exact=True)  # a prepared folder is checked, not prepared again
    assert gf.prepare(tmp_path / "gz", tmp_path, exact=False)["train"] == 4_000_000  # --smoke takes any


def test_dry_run_commands_parse_and_read_655360_val_tokens(capsys):
    from llmpy.cli import build_parser

    assert gf.main(["matched,speed", "--dry-run"]) == 0
    commands = [line.split("  #")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("python")]
    assert len(commands) == 8
    steps = []
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[3:])
        if args.command == "train":
            assert args.val_max_steps * args.batch_size * args.seq_len == 655_360
            assert (args.total_batch_size, args.model, args.recompute) == (65536, "d12", 0)
            steps.append((args.recipe, args.max_steps, args.val_every))
        elif not args.check:
            assert (args.total_batch_size, args.batch_size, args.model) == (524_288, 64, "d12")
    assert steps == [("modern", 300, 10), ("frontier", 150, 10), ("modern", 100, 10), ("frontier", 50, 10)]


def test_a_smoke_call_end_to_end(tmp_path, shakespeare_file, bpe_file):
    corpus = tmp_path / "gz"
    corpus.mkdir()
    documents = [p for p in shakespeare_file.read_text().split("\n\n") if p.strip()]
    for name, part in (("train_00", documents[:500]), ("train_01", documents[500:1000]),
                       ("val_00", documents[1000:1200])):
        with gzip.open(corpus / f"{name}.jsonl.gz", "wt") as handle:
            handle.writelines(json.dumps({"text": text}) + "\n" for text in part)
    out = tmp_path / "out"
    command = [sys.executable, str(BENCHMARKS / "gpu_frontier.py"), "matched,ablation,speed", "--smoke",
               "--corpus-gz", str(corpus), "--tokenizer", str(bpe_file), "--data", str(tmp_path / "corpus"),
               "--out", str(out), "--steps", "50",
               "--only", "modern_100,frontier_50,frontier,frontier-smear,bench_frontier"]
    env = {**os.environ, "LLMPY_GPT2_BPE": str(bpe_file), "LLMPY_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("matched budgets: frontier 1 "))
    match = re.fullmatch(r"matched budgets: frontier 1 steps (\d+\.\d{3}) in \d+\.\d s vs modern 2 steps "
                         r"(\d+\.\d{3}) in \d+\.\d s \(CPU, \d{4}-\d{2}-\d{2}\)", line)
    assert match, line
    with tarfile.open(out / "runs_matched.tar.gz") as tar:  # the val losses, read from the runs' own metrics
        for name, shown in (("frontier_50", match.group(1)), ("modern_100", match.group(2))):
            records = [json.loads(x) for x in tar.extractfile(f"{name}/metrics.jsonl").read().decode().splitlines()]
            last = max((r for r in records if r["kind"] == "val"), key=lambda r: r["step"])
            assert f"{last['loss']:.3f}" == shown
    matched = {r["name"]: r for r in json.loads((out / "matched.json").read_text())["runs"]}
    assert set(matched) == {"modern_100", "frontier_50"} and matched["modern_100"]["rc"] == 0
    assert sorted(map(int, matched["modern_100"]["val"])) == [0, 1, 2]  # -x 2 -v 1 at the smoke size
    ablation = {r["name"]: r for r in json.loads((out / "ablation.json").read_text())["runs"]}
    delta = ablation["frontier-smear"]["final_val"][1] - ablation["frontier"]["final_val"][1]
    assert "| frontier-smear | `--arch " in done.stdout and f"{delta:+.3f} |" in done.stdout
    speed = json.loads((out / "speed.json").read_text())["runs"]
    assert speed[0]["name"] == "bench_frontier" and speed[0]["tok_per_s"] > 0
    import plot_frontier

    runs, calls = plot_frontier.load([out / "matched.json"])
    modern = next(r for r in runs if r["name"] == "modern_100")
    assert plot_frontier.curve(modern, "tokens")[0] == [0, 128 / 1e6, 256 / 1e6]  # val every step of 128 tokens
    assert plot_frontier.curve(modern, "seconds")[0][-1] == pytest.approx(modern["train_s"], abs=1e-3)
    plot_frontier.main([str(out / "matched.json"), "--out", str(tmp_path / "plot.png")])
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and calls.startswith("CPU, ")
    counts = json.loads((tmp_path / "corpus" / "manifest.json").read_text())["total_tokens"]
    assert counts["train"] > 0 and f"corpus: {counts} tokens" in done.stdout  # prepared by the driver
