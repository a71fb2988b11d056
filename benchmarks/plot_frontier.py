"""Issue 27's figure: val loss against training tokens and against training seconds, the frontier recipe against
the modern one at matched budgets, from the JSON that `benchmarks/gpu_frontier.py matched` writes (one call's, or
the parts of several: their runs are merged).

    python benchmarks/plot_frontier.py MATCHED.json [MORE.json ...] [--out docs/frontier_vs_modern.png]

Training seconds as gpu_frontier.py counts them (train_runs.summary): the logged step times, the first step (which
holds torch.compile) counted at the median step time; compile time is reported apart in benchmarks/RESULTS.md."""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"modern": "C3", "frontier": "C2"}


def load(paths: list[Path]) -> tuple[list[dict], str]:
    """The runs with val curves of every file, and "GPU, date" of each call."""
    runs, calls = [], []
    for path in paths:
        payload = json.loads(path.read_text())
        runs += [r for r in payload["runs"] if r.get("val")]
        calls.append(f"{payload['gpu']}, {payload['date']}")
    return runs, "; ".join(dict.fromkeys(calls))


def curve(run: dict, axis: str) -> tuple[list[float], list[float]]:
    """(x, val loss) at the run's val steps, x = tokens (millions) or training seconds before each."""
    steps = sorted(run["val"], key=int)
    x = [run["val_tokens"][s] / 1e6 if axis == "tokens" else run["val_seconds"][s] for s in steps]
    return x, [run["val"][s] for s in steps]


def plot(runs: list[dict], calls: str, out: Path) -> None:
    fig, panels = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, panel, label in (("tokens", panels[0], "training tokens (millions)"),
                               ("seconds", panels[1], "training seconds (compile apart)")):
        for run in sorted(runs, key=lambda r: (r["recipe"], -r["max_steps"])):
            style = "o-" if run["max_steps"] in (300, 150) else "s--"
            panel.plot(*curve(run, axis), style, ms=3, color=COLORS.get(run["recipe"], "C0"),
                       label=f"{run['recipe']}, {run['max_steps']}-step schedule: {run['final_val'][1]:.3f}")
        for run in runs:
            if run["recipe"] == "modern":
                panel.axhline(run["final_val"][1], color="gray", ls=":", lw=1)
        panel.set_xlabel(label)
        panel.set_ylabel("val loss (655,360 tokens)")
        panel.grid(alpha=0.3)
    panels[0].legend(fontsize=8)
    fig.suptitle(f"frontier vs modern at matched budgets: d12, 65,536 tokens/step, T=1024, shared 15.6M-token corpus "
                 f"({calls})", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="matched.json from gpu_frontier.py (one or more parts)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" / "frontier_vs_modern.png")
    args = parser.parse_args(argv)
    plot(*load(args.files), args.out)


if __name__ == "__main__":
    main()
