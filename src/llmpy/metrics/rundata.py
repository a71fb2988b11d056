"""A run directory read back: every series of main.log (llm.c's line layout, so llm.c's own runs too) and
metrics.jsonl, {step: value}, with the last logged value per step (a resumed run re-logs the steps after its
checkpoint). What `llmpy plot` and the notebook draw from."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmpy.errors import LlmpyError

Series = dict[int, float]  # step -> value

# main.log key -> RunData series; metrics.jsonl (kind, field) -> series. Both name the same numbers.
_MAIN_LOG_SERIES = {"trl": "train_loss", "tel": "val_loss", "eval": "hellaswag", "lr": "lr", "norm": "grad_norm"}
_JSONL_SERIES = {
    ("train", "loss"): "train_loss", ("train", "lr"): "lr", ("train", "grad_norm"): "grad_norm",
    ("train", "tokens_per_sec"): "tokens_per_sec", ("train", "mfu"): "mfu", ("train", "step_ms"): "step_ms",
    ("train", "tokens"): "tokens", ("val", "loss"): "val_loss", ("eval", "accuracy"): "hellaswag",
}
SERIES_NAMES = tuple(dict.fromkeys([*_MAIN_LOG_SERIES.values(), *_JSONL_SERIES.values()]))
_STEP_RE = re.compile(r"s:(\d+)\s")
_FIELD_RE = re.compile(r"(\w+):(\S+)")


@dataclass
class RunData:
    """Every series of one run directory, {step: value} with the last logged value per step."""

    name: str
    path: Path
    series: dict[str, Series] = field(default_factory=lambda: {name: {} for name in SERIES_NAMES})
    config: dict = field(default_factory=dict)  # the metrics.jsonl "config" record (model_config, num_parameters...)
    notes: list[str] = field(default_factory=list)

    def tokens_per_step(self) -> int | None:
        """Tokens per optimizer step from metrics.jsonl (the last value logged), or None when unknown."""
        tokens = self.series["tokens"]
        return int(tokens[max(tokens)]) if tokens else None


def load_run(path: str | Path) -> RunData:
    """Read main.log and/or metrics.jsonl of a run directory into a RunData."""
    path = Path(path)
    if not path.is_dir():
        raise LlmpyError(f"{path}: no such run directory")
    main_log, jsonl = path / "main.log", path / "metrics.jsonl"
    if not main_log.is_file() and not jsonl.is_file():
        raise LlmpyError(f"{path}: no main.log or metrics.jsonl in this run directory")
    run = RunData(name=path.resolve().name, path=path)
    if main_log.is_file():
        _read_main_log(main_log, run)
    if jsonl.is_file():
        _read_jsonl(jsonl, run)  # full precision: overrides main.log's 6-decimal copies of the same numbers
    return run


def _tolerable_cut(lines: list[str], index: int, step_of) -> bool:
    """A garbled line is a crash's cut-off write if nothing follows it or the next step restarts (resume)."""
    before = [step_of(line) for line in lines[:index]]
    after = [step_of(line) for line in lines[index + 1:]]
    previous = next((s for s in reversed(before) if s is not None), None)
    following = next((s for s in after if s is not None), None)
    return following is None or (previous is not None and following <= previous)


def _main_log_line(line: str) -> tuple[int, dict[str, float]] | None:
    """(step, {key: value}) from one main.log line, or None for a blank or garbled one (e.g. cut off by a crash)."""
    match = _STEP_RE.match(line)
    if not match:
        return None
    try:
        values = {key: float(value) for key, value in _FIELD_RE.findall(line[match.end():])}
    except ValueError:
        return None
    return (int(match.group(1)), values) if values else None


def _read_main_log(path: Path, run: RunData) -> None:
    """Merge main.log's series into `run`; an unparsable line raises, naming the file and line number."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()

    def step_of(line: str) -> int | None:
        parsed = _main_log_line(line)
        return parsed[0] if parsed else None

    for index, line in enumerate(lines):
        if not line.strip():
            continue
        parsed = _main_log_line(line)
        if parsed is None:
            if _tolerable_cut(lines, index, step_of):
                run.notes.append(f"{path}:{index + 1}: skipped a cut-off line")
                continue
            raise LlmpyError(f"{path}:{index + 1}: cannot parse {line[:60]!r} (expected 's:STEP key:value ...')")
        step, values = parsed
        for key, value in values.items():
            if key in _MAIN_LOG_SERIES:
                run.series[_MAIN_LOG_SERIES[key]][step] = value


def _json_step(line: str) -> int | None:
    try:
        record = json.loads(line)
        return int(record["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _read_jsonl(path: Path, run: RunData) -> None:
    """Merge metrics.jsonl's records into `run` (null values, i.e. NaN/inf, are left out)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, kind = int(record["step"]), record["kind"]
        except (ValueError, KeyError, TypeError):
            if _tolerable_cut(lines, index, _json_step):
                run.notes.append(f"{path}:{index + 1}: skipped a cut-off line")
                continue
            raise LlmpyError(f"{path}:{index + 1}: not a metrics record (JSON with 'step' and 'kind')") from None
        if kind == "config":
            run.config = record
        for (record_kind, key), name in _JSONL_SERIES.items():
            value = record.get(key)
            if record_kind == kind and isinstance(value, (int, float)) and not isinstance(value, bool):
                run.series[name][step] = float(value)
