"""Issue 16 on one GPU: the modern recipe against the classic one on the shared corpus (d12, T=1024, 65,536 tokens
per step), many short runs in one process (`llmpy train` through llmpy.cli.main, so CUDA starts once).

    python benchmarks/gpu_modern_runs.py PHASE[,PHASE...] OUT_DIR [RUN_NAME ...]

PHASE `attention`: compiled 30-step runs of document masking, the window schedule, the FP8 head, the batch-size
ramp and the sequence-length warmup, and the same tokens in 60 steps of half the batch; `sweep`: eager 30-step runs of the modern recipe's knobs; `ablate`: eager 30-step runs, each switch off;
`final`: compiled runs, classic 300 steps (the baseline of issue 16) and the modern recipe to 300 steps and to 30.
Prints one line per run: val loss at its val steps, train seconds (sum of step times, the first step's compilation
reported apart), mean tok/s after the first step.
"""

import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from train_runs import D12_65K, corpus_flags, summary, train

D = os.environ.get("CORPUS", ".devcarry/corpus")  # the corpus prepared as in benchmarks/RESULTS.md
COMMON = corpus_flags(D) + D12_65K
CLASSIC = ["-l", "0.0006", "-u", "30", "-q", "0.1", "-c", "0.1"]
MODERN = ["--recipe", "modern"]
EAGER30 = ["--compile", "0", "-x", "30", "-v", "15"]

COMPILED30 = ["-x", "30", "-v", "5"]

PHASES = {
    "attention": [  # the second session's techniques, compiled, 30 steps each, and the batch-size question
        ("m30", MODERN + COMPILED30),
        ("m30_doc", MODERN + ["--arch", "doc_mask=1"] + COMPILED30),  # FlexAttention (the default since 2026-12-02)
        ("m30_doc_dense", MODERN + ["--arch", "doc_mask=1"] + COMPILED30),  # with LLMPY_FLEX_ATTENTION=0
        ("m30_win128", MODERN + ["--arch", "window=128"] + COMPILED30),
        ("m30_win128_dense", MODERN + ["--arch", "window=128"] + COMPILED30),
        ("m30_doc_win128", MODERN + ["--arch", "doc_mask=1,window=128"] + COMPILED30),
        ("m30_fp8", MODERN + ["--arch", "fp8_head=1"] + COMPILED30),
        ("m30_doc_fp8", MODERN + ["--arch", "doc_mask=1,fp8_head=1"] + COMPILED30),
        ("m60_d32k", MODERN + ["-d", "32768", "-b", "32", "-x", "60", "-v", "10"]),
        ("m30_b16", MODERN + ["-b", "16"] + COMPILED30),  # the ramp's micro-batch, without the ramp
        ("m30_ramp10", MODERN + ["-b", "16", "--batch-ramp", "10"] + COMPILED30),
        ("m30_seqwarm5", MODERN + ["--seq-len-warmup", "5"] + COMPILED30),
    ],
    "sweep": [
        ("m_default", MODERN),
        ("m_lr0.1", MODERN + ["-l", "0.1"]),
        ("m_lr0.025", MODERN + ["-l", "0.025"]),
        ("m_head1", MODERN + ["--optimizer-args", "head=1"]),
        ("m_head4", MODERN + ["--optimizer-args", "head=4"]),
        ("m_emb4", MODERN + ["--optimizer-args", "embedding=4"]),
        ("m_emb30", MODERN + ["--optimizer-args", "embedding=30"]),
        ("m_cool1", MODERN + ["--wsd-cooldown-frac", "1.0"]),
        ("m_cool0.2", MODERN + ["--wsd-cooldown-frac", "0.2"]),
        ("m_mom0.95", MODERN + ["--optimizer-args", "momentum_start=0.95"]),
        ("m_normuon", MODERN + ["--optimizer-args", "normuon=1"]),
        ("m_wd0.1", MODERN + ["-c", "0.1"]),
    ],
    "ablate": [
        ("a_none", MODERN),
        *[(f"a_{switch}", MODERN + ["--arch", switch]) for switch in (
            "rotary=0", "qk_norm=0", "relu2=0", "rmsnorm=0", "zero_init=0", "tie=1", "softcap=0", "value_embeds=0",
            "unet=0")],
        ("a_adamw", MODERN + ["--optimizer", "adamw", "-l", "0.003", "-u", "3"]),
        ("a_gpt2_muon", MODERN + ["--family", "gpt2"]),
        ("classic_x30", CLASSIC + ["-x", "30", "-v", "15", "--compile", "0", "-u", "3", "-l", "0.003"]),
    ],
    "final": [
        ("modern_30", MODERN + ["-x", "30", "-v", "5"]),
        ("classic_300", CLASSIC + ["-x", "300", "-v", "50"]),
        ("modern_300", MODERN + ["-x", "300", "-v", "10"]),
        ("a_gpt2_muon", MODERN + ["--family", "gpt2"] + EAGER30),
    ],
}


def run_phase(phase: str, out: Path, only: list[str], deadline: float) -> None:
    """Each run writes to a scratch directory (its logs stay there; no checkpoint); its metrics go to
    `out`/results.jsonl. A run that would start after `deadline` (time.time()) is skipped: the trainer takes SIGTERM
    as a preemption and stops only its own run, so an outer `timeout` would not stop the list."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp())
    for name, flags in PHASES[phase]:
        if (only and name not in only) or time.time() > deadline:
            continue
        extra = EAGER30 if phase != "final" and "-x" not in flags else []
        run = scratch / name.replace("=", "")
        os.environ["LLMPY_FLEX_ATTENTION"] = "0" if name.endswith("_dense") else "1"  # read at each forward
        start = time.time()
        code = train([*COMMON, *flags, *extra, "-o", str(run)])  # no checkpoint (train_runs.train)
        # a device call brings back only a few files: each run's metrics go into results.jsonl, not a folder
        wall = time.time() - start
        result = {"name": name, "rc": code, "wall_s": round(wall, 1), "flags": " ".join(flags + extra)}
        if code == 0:
            result.update(summary(run))
        print("RESULT " + json.dumps(result), flush=True)
        with open(out / "results.jsonl", "a") as handle:
            handle.write(json.dumps(result) + "\n")
        # a fresh compiler state per run: dynamo's recompilation check of the shared ModelWithLoss.forward
        # evaluates the previous model's guards against this one (KeyError: 'rotary', torch 2.11)
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    deadline = time.time() + float(os.environ.get("BUDGET_S", "1e9"))
    for phase in sys.argv[1].split(","):
        run_phase(phase, Path(sys.argv[2]), sys.argv[3:], deadline)
