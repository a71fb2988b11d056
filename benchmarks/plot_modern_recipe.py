"""The issue-16 figure: val loss against tokens and against training seconds, classic vs modern recipe, from the
H200 logs in benchmarks/logs/modern_recipe_2026-12-02 (docs/modern_vs_classic.png).

Training seconds are the sum of the logged step times with the first step (which holds torch.compile's work)
counted at the median step time; compile time is reported in benchmarks/RESULTS.md. The 300-step modern run's
per-step log did not come back from the device (too many files), so its seconds are its step count times its mean
step time (39.62 s / 299 steps after the first)."""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LOGS = Path(__file__).parent / "logs" / "modern_recipe_2026-12-02"
TOKENS_PER_STEP = 65536


def from_metrics(run: Path) -> tuple[dict, list[float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["loss"] for r in records if r["kind"] == "val"}
    steps = [r["step_ms"] / 1000 for r in records if r["kind"] == "train"]
    steps[0] = statistics.median(steps[1:])  # compile time apart
    return val, steps


def cumulative(steps: list[float], step: int) -> float:
    return sum(steps[:step])


def main(out: Path) -> None:
    classic_val, classic_steps = from_metrics(LOGS / "classic_300")
    modern30_val, modern30_steps = from_metrics(LOGS / "modern_30")
    row = next(json.loads(line) for line in (LOGS / "call3_classic300_modern300.jsonl").read_text().splitlines()
               if json.loads(line)["name"] == "modern_300")
    modern300_val = {int(k): v for k, v in row["val"].items()}
    mean_step = row["train_s_after_first"] / 299
    series = [
        ("classic (GPT-2 + AdamW, llm.c's recipe), 300 steps", classic_val, lambda s: cumulative(classic_steps, s), "C0"),
        ("modern recipe, 300-step schedule", modern300_val, lambda s: s * mean_step, "C3"),
        ("modern recipe, 30-step schedule", modern30_val, lambda s: cumulative(modern30_steps, s), "C2"),
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, val, seconds, color in series:
        steps = sorted(val)
        left.plot([s * TOKENS_PER_STEP / 1e6 for s in steps], [val[s] for s in steps], "o-", ms=3, label=label,
                  color=color)
        right.plot([seconds(s) for s in steps], [val[s] for s in steps], "o-", ms=3, label=label, color=color)
    for axis, xlabel in ((left, "training tokens (millions)"), (right, "training seconds on one H200 (compile apart)")):
        axis.axhline(classic_val[300], color="gray", ls="--", lw=1)
        axis.text(axis.get_xlim()[1] * 0.55, classic_val[300] + 0.08, f"classic at 300 steps: {classic_val[300]:.3f}",
                  color="gray", fontsize=8)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("val loss (655,360 tokens)")
        axis.set_ylim(3.8, 8.0)
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("GPT-2 124M-size (d12) on the shared 15.6M-token corpus, 65,536 tokens/step, T=1024 (H200, 2026-12-02)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "docs" / "modern_vs_classic.png")
