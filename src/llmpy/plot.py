"""`llmpy plot`: loss, HellaSwag, LR, grad norm, throughput and MFU of one or more runs, next to GPT-2's numbers.

Reads a run directory's main.log (llm.c's line layout, so llm.c's own runs work too) and, when present, its
metrics.jsonl (full precision, throughput, MFU, tokens per step, the model config). A resumed run re-logs the steps
after its checkpoint, so the last value logged for a step wins.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmpy.argtypes import non_negative_int, positive_int
from llmpy.errors import LlmpyError
from llmpy.gpt2 import reference_for
from llmpy.metrics.rundata import RunData, Series, load_run
from llmpy.metrics.units import format_duration

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: `llmpy --help` builds this command's parser
    from matplotlib.figure import Figure

X_AXES = ("steps", "tokens")


# ------------------------------------------------------------------------------------------------------ panel data

@dataclass
class Curve:
    """One line on a panel: its label, x and y values, and how to draw it."""

    label: str
    x: list[float]
    y: list[float]
    style: dict = field(default_factory=dict)


@dataclass
class Panel:
    """One axis of the figure: curves, horizontal reference lines ({label: y}) and labels."""

    title: str
    ylabel: str
    curves: list[Curve] = field(default_factory=list)
    references: dict[str, tuple[float, str]] = field(default_factory=dict)  # label -> (y, linestyle)
    log_y: bool = False
    y_format: str = "plain"  # tick labels: plain (0.0006), percent (35%), count (3.5M); log axes: plain numbers
    zoom_past_start: bool = False  # cut the y axis above the values after the first 3% (the loss starts at ~11)


def reference_of(run: RunData, fallback: str | None = None) -> tuple[str, dict] | None:
    """(size, REFERENCE row) of OpenAI's GPT-2 of this run's shape: from its config record, else `fallback` (dN)."""
    from llmpy.config import ModelConfig

    shape = run.config.get("model_config")  # any family's config: the size is what is compared
    if isinstance(shape, dict) and isinstance(shape.get("n_layer"), int) and isinstance(shape.get("n_embd"), int):
        return reference_for(shape["n_layer"], shape["n_embd"])
    if fallback:
        config = ModelConfig.from_descriptor(fallback)
        return reference_for(config.n_layer, config.n_embd)
    return None


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start); window <= 1 returns the values."""
    if window <= 1:
        return list(values)
    averaged, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averaged.append(total / min(index + 1, window))
    return averaged


def x_values(run: RunData, steps: list[int], x_axis: str) -> list[float]:
    """Steps, or for --x tokens the tokens trained before each step: the sum of those logged for the steps before it
    (a --batch-ramp makes the first steps smaller), a step not logged counting as the run's last logged step."""
    tokens = run.series["tokens"]
    if x_axis != "tokens" or not tokens or not steps:
        return [float(step) for step in steps]
    per_step = run.tokens_per_step()
    before, total = [], 0.0
    for step in range(max(steps) + 1):
        before.append(total)
        total += tokens.get(step, per_step)
    return [before[step] for step in steps]


def _curve(run: RunData, name: str, label: str, x_axis: str, scale: float = 1.0, drop_warmup: bool = False,
           **style) -> Curve | None:
    """One series as a curve. `drop_warmup` (speed panels): leave out steps slower than a third of the run's median,
    i.e. the first step of each launch, which includes torch.compile and would flatten the rest of the curve."""
    series = run.series[name]
    if not series:
        return None
    steps = sorted(series)
    if drop_warmup:
        median = sorted(series.values())[len(series) // 2]
        steps = [step for step in steps if series[step] >= median / 3] or steps
    return Curve(label, x_values(run, steps, x_axis), [series[step] * scale for step in steps], style)


def build_panels(runs: list[RunData], x_axis: str = "steps", smooth: int = 0,
                 reference: str | None = None) -> dict[str, Panel]:
    """The data of every panel that has some: loss, hellaswag, lr, grad_norm, tokens_per_sec, mfu."""
    panels = {
        "loss": Panel("Loss", "cross-entropy loss (log scale)", log_y=True, zoom_past_start=True),
        "hellaswag": Panel("HellaSwag", "accuracy (acc_norm)"),
        "lr": Panel("Learning rate", "learning rate"),
        "grad_norm": Panel("Gradient norm", "grad norm before clipping (log scale)", log_y=True),
        "tokens_per_sec": Panel("Throughput", "tokens / s", y_format="count"),
        "mfu": Panel("Model FLOPs utilisation", "MFU (%)", y_format="percent"),
    }
    for color, run in zip(_colors(), runs):
        multi = len(runs) > 1
        prefix = f"{run.name} " if multi else ""
        train = run.series["train_loss"]
        if train and smooth > 1:
            steps = sorted(train)
            raw = [train[step] for step in steps]
            xs = x_values(run, steps, x_axis)
            panels["loss"].curves.append(Curve(f"{prefix}train (raw)", xs, raw, dict(color=color, alpha=0.25, lw=0.6)))
            panels["loss"].curves.append(Curve(f"{prefix}train (avg {smooth})", xs, moving_average(raw, smooth),
                                               dict(color=color, lw=1.6)))
        else:
            _add(panels["loss"], _curve(run, "train_loss", f"{prefix}train", x_axis, color=color, lw=1.4))
        _add(panels["loss"], _curve(run, "val_loss", f"{prefix}val", x_axis, color=color, lw=1.6, ls="--",
                                    marker="o", ms=3.5))
        _add(panels["hellaswag"], _curve(run, "hellaswag", f"{run.name}", x_axis, color=color, marker="o", ms=3.5))
        for name in ("lr", "grad_norm"):
            _add(panels[name], _curve(run, name, run.name, x_axis, color=color, lw=1.2))
        _add(panels["tokens_per_sec"], _curve(run, "tokens_per_sec", run.name, x_axis, drop_warmup=True,
                                              color=color, lw=1.2))
        _add(panels["mfu"], _curve(run, "mfu", run.name, x_axis, scale=100.0, drop_warmup=True, color=color, lw=1.2))
        _add_references(panels, reference_of(run, reference))
    return {key: panel for key, panel in panels.items() if panel.curves}


def _add(panel: Panel, curve: Curve | None) -> None:
    if curve is not None:
        panel.curves.append(curve)


def _add_references(panels: dict[str, Panel], match: tuple[str, dict] | None) -> None:
    """OpenAI's GPT-2 val loss and GPT-2/GPT-3 HellaSwag of the run's size, as horizontal lines."""
    if match is None:
        return
    size, ref = match
    panels["loss"].references[f"GPT-2 {size} val loss ({ref['gpt2_val_loss']:.3f})"] = (ref["gpt2_val_loss"], "--")
    panels["hellaswag"].references[f"GPT-2 {size} ({ref['gpt2_hellaswag']:.3f})"] = (ref["gpt2_hellaswag"], "--")
    panels["hellaswag"].references[f"GPT-3 {size} ({ref['gpt3_hellaswag']:.3f})"] = (ref["gpt3_hellaswag"], ":")


def _colors() -> list[str]:
    return ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"] * 8


# -------------------------------------------------------------------------------------------------------- drawing

@dataclass
class PlotResult:
    """The figure, its axes by panel name, and the data each axis was given."""

    figure: Figure
    axes: dict
    panels: dict[str, Panel]
    x_axis: str


def plot_runs(runs: list[RunData], x_axis: str = "steps", smooth: int = 0, reference: str | None = None,
              title: str | None = None) -> PlotResult:
    """A multi-panel figure: loss across the top, the other panels with data two per row below it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x_axis not in X_AXES:
        raise LlmpyError(f"--x must be one of {', '.join(X_AXES)}, got {x_axis!r}")
    if x_axis == "tokens" and any(run.tokens_per_step() is None for run in runs):
        x_axis = "steps"  # llm.c's main.log does not say how many tokens a step is
    panels = build_panels(runs, x_axis, smooth, reference)
    if not panels:
        raise LlmpyError(f"no metrics to plot in {', '.join(str(run.path) for run in runs)}")
    others = [key for key in panels if key != "loss"]
    rows = 1 + math.ceil(len(others) / 2)
    figure = Figure(figsize=(11, 3.4 + 2.6 * (rows - 1)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(rows, 2, height_ratios=[1.35] + [1.0] * (rows - 1))
    axes = {}
    if "loss" in panels:
        axes["loss"] = figure.add_subplot(grid[0, :])
    for index, key in enumerate(others):
        row, col = 1 + index // 2, index % 2
        span = grid[row, :] if (index == len(others) - 1 and col == 0) else grid[row, col]
        axes[key] = figure.add_subplot(span)
    for key, axis in axes.items():
        _draw_panel(axis, panels[key], x_axis)
    if title:
        figure.suptitle(title, fontsize=14, fontweight="bold")
    return PlotResult(figure, axes, panels, x_axis)


def _draw_panel(axis, panel: Panel, x_axis: str) -> None:
    """Curves, reference lines, labels, readable ticks and a legend on one axis."""
    from matplotlib.ticker import FuncFormatter

    for curve in panel.curves:
        style = dict(curve.style)
        if len(curve.x) > 40:
            style.pop("marker", None)  # markers only where they mark sparse evaluations
        axis.plot(curve.x, curve.y, label=curve.label, **style)
    for label, (y, style) in panel.references.items():
        axis.axhline(y, color="0.35", ls=style, lw=1.1, label=label)
    axis.set_title(panel.title, fontsize=11, fontweight="bold", loc="left")
    axis.set_ylabel(panel.ylabel, fontsize=9)
    axis.set_xlabel("tokens trained" if x_axis == "tokens" else "optimizer step", fontsize=9)
    axis.xaxis.set_major_formatter(FuncFormatter(_short_number))
    axis.grid(True, alpha=0.3, lw=0.6)
    axis.tick_params(labelsize=8.5)
    if panel.log_y:
        axis.set_yscale("log")
    top = _zoomed_top(panel)
    if top is not None:
        axis.set_ylim(top=top)
    _format_y(axis, panel)
    entries = len(panel.curves) + len(panel.references)
    if entries > 1:
        axis.legend(fontsize=8, frameon=False, loc="upper right" if panel.zoom_past_start else "best",
                    ncol=2 if entries > 4 else 1)


def _format_y(axis, panel: Panel) -> None:
    """Plain-number ticks: 3, 3.5, 4 on a log axis, 35% for MFU, 3.5M for tokens/s, 0.0006 for the LR."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if panel.log_y:
        low, high = axis.get_ylim()
        # the narrower the range (the loss after warm-up spans 3..6), the more ticks per decade
        ratio = high / max(low, 1e-12)
        subs = (1.0, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9) if ratio < 4 else (1.0, 1.5, 2, 3, 5, 7) if ratio < 40 \
            else (1.0, 2, 5)
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
    elif panel.y_format == "percent":
        axis.set_ylim(0, axis.get_ylim()[1] * 1.1)  # from zero: run-to-run jitter of 1% should look like 1%
        axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.0f}%"))
    elif panel.y_format == "count":
        axis.set_ylim(0, axis.get_ylim()[1] * 1.1)
        axis.yaxis.set_major_formatter(FuncFormatter(_short_number))
    else:
        axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.3g}"))


def _zoomed_top(panel: Panel) -> float | None:
    """An upper y limit that keeps the first steps' huge loss from flattening the rest of the curve, or None."""
    if not panel.zoom_past_start:
        return None
    tails, everything = [], []
    for curve in panel.curves:
        finite = [(x, y) for x, y in zip(curve.x, curve.y) if math.isfinite(y)]
        everything += [y for _, y in finite]
        if finite:
            start = finite[0][0] + 0.03 * (finite[-1][0] - finite[0][0])  # skip the first 3% of the run
            tails += [y for x, y in finite if x >= start]
    if len(tails) < 20:
        return None
    top = max(tails) * 1.08
    return top if top < max(everything) else None


def _short_number(value: float, _position=None) -> str:
    """1500 -> '1.5K', 2.5e9 -> '2.5B' for tick labels."""
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:g}{suffix}"
    return f"{value:g}"


def figure_png(figure: Figure, dpi: int = 150) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------------------- summary

@dataclass
class RunSummary:
    """The headline numbers of one run."""

    name: str
    last_step: int | None
    min_train_loss: tuple[float, int] | None  # (value, step)
    min_val_loss: tuple[float, int] | None
    max_hellaswag: tuple[float, int] | None
    tokens_seen: int | None
    train_seconds: float | None  # sum of step_ms over the steps kept: training only, no evals or restarts


def _extreme(series: Series, pick) -> tuple[float, int] | None:
    finite = {step: value for step, value in series.items() if math.isfinite(value)}
    if not finite:
        return None
    step = pick(finite, key=lambda s: (finite[s], s))
    return finite[step], step


def summarize(run: RunData) -> RunSummary:
    """Min train/val loss, max HellaSwag, tokens seen and training time of a run."""
    steps = set().union(*(run.series[name] for name in ("train_loss", "val_loss", "hellaswag")))
    tokens = run.series["tokens"]
    train_steps = run.series["train_loss"]
    tokens_seen = None
    if tokens:
        tokens_seen = int(sum(tokens.values()))
    step_ms = run.series["step_ms"]
    return RunSummary(
        name=run.name, last_step=max(steps) if steps else None,
        min_train_loss=_extreme(train_steps, min), min_val_loss=_extreme(run.series["val_loss"], min),
        max_hellaswag=_extreme(run.series["hellaswag"], max), tokens_seen=tokens_seen,
        train_seconds=sum(step_ms.values()) / 1000 if step_ms else None,
    )


def summary_rows(summaries: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table, as text cells."""
    def at(pair, fmt: str) -> str:
        return "-" if pair is None else f"{pair[0]:{fmt}} (step {pair[1]})"

    header = ["run", "last step", "min train loss", "min val loss", "max HellaSwag", "tokens seen", "train time"]
    rows = [[s.name, "-" if s.last_step is None else str(s.last_step), at(s.min_train_loss, ".4f"),
             at(s.min_val_loss, ".4f"), at(s.max_hellaswag, ".4f"),
             "-" if s.tokens_seen is None else _short_number(s.tokens_seen),
             "-" if s.train_seconds is None else format_duration(s.train_seconds)] for s in summaries]
    return header, rows


def format_summary(summaries: list[RunSummary]) -> str:
    """The summary table as aligned plain text."""
    header, rows = summary_rows(summaries)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def write_html(path: str | Path, pngs: list[bytes], summaries: list[RunSummary], title: str = "llmpy runs",
               notes: list[str] | None = None) -> Path:
    """A self-contained HTML report: the summary table and the figures inlined as base64 PNG."""
    header, rows = summary_rows(summaries)
    table = "<table><tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows) + "</table>"
    images = "".join(f'<img alt="training curves" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     for png in pngs)
    note_items = "".join(f"<li>{html.escape(note)}</li>" for note in notes or [])
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f3f3f3}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin-top:1.5em}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{table}{f'<ul>{note_items}</ul>' if note_items else ''}"
            f"{images}</body></html>\n")
    path = Path(path)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise LlmpyError(f"--html {path}: cannot write ({exc.strerror})") from None
    return path


# ------------------------------------------------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `llmpy plot`."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (main.log and/or metrics.jsonl)")
    parser.add_argument("--out", default="plot.png", help="image to write (default: plot.png; .png, .svg or .pdf)")
    parser.add_argument("--html", default=None, metavar="FILE.html", help="also write a self-contained HTML report")
    parser.add_argument("--x", default="steps", choices=X_AXES, help="x axis (tokens needs metrics.jsonl)")
    parser.add_argument("--smooth", type=non_negative_int, default=0, metavar="N",
                        help="moving average of the train loss over N steps (0 = off)")
    parser.add_argument("--reference", default=None, metavar="MODEL",
                        help="GPT-2 size for the baselines when a run has no config record (e.g. d12 for llm.c runs)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--dpi", type=positive_int, default=150, help="image resolution (default: 150)")


MAX_PIXELS = 2**16 - 1  # matplotlib's Agg draws at most this many pixels a side


def check_pixels(figure: Figure, dpi: int) -> None:
    """Refuse a --dpi that makes the image larger than matplotlib draws, in one line, before it tries."""
    width, height = (float(inches) * dpi for inches in figure.get_size_inches())
    if max(width, height) > MAX_PIXELS:
        raise LlmpyError(f"--dpi {dpi}: the figure would be {width:,.0f} x {height:,.0f} pixels, more than the "
                         f"{MAX_PIXELS:,} a side matplotlib draws; give a smaller --dpi")


def run(args: argparse.Namespace) -> int:
    """Load the runs, print their summaries, write the figure (and the HTML report)."""
    runs = [load_run(path) for path in args.runs]
    result = plot_runs(runs, x_axis=args.x, smooth=args.smooth, reference=args.reference, title=args.title)
    notes = [note for run_data in runs for note in run_data.notes]
    if result.x_axis != args.x:
        notes.append("--x tokens: tokens per step unknown (no metrics.jsonl 'tokens'), plotting against steps")
    summaries = [summarize(run_data) for run_data in runs]
    print(format_summary(summaries))
    for note in notes:
        print(f"note: {note}")
    out = Path(args.out)
    check_pixels(result.figure, args.dpi)
    try:
        result.figure.savefig(out, dpi=args.dpi)
    except OSError as exc:
        raise LlmpyError(f"--out {out}: cannot write the figure ({exc.strerror or exc})") from None
    except (ValueError, MemoryError) as exc:
        raise LlmpyError(f"--out {out}: cannot write the figure ({exc or 'out of memory'})") from None
    print(f"wrote {out}")
    if args.html:
        write_html(args.html, [figure_png(result.figure, args.dpi)], summaries, args.title or "llmpy runs", notes)
        print(f"wrote {args.html}")
    return 0
