"""Run logs: `main.log` in llm.c's line format (so llm.c tooling reads it) and `metrics.jsonl` with everything."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path


def _finite_or_none(value):
    """JSON has no NaN/inf: store them as null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Writes main.log + metrics.jsonl in a run directory; a no-op without a directory or on non-zero ranks."""

    def __init__(self, out_dir: str | Path | None, *, enabled: bool = True, resume: bool = False):
        self.active = bool(out_dir) and enabled
        self._main = self._jsonl = None
        if self.active:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            mode = "a" if resume else "w"  # llm.c: -y 1 appends, otherwise the log starts over
            self._main = open(out / "main.log", mode, encoding="utf-8")
            self._jsonl = open(out / "metrics.jsonl", mode, encoding="utf-8")

    def _write(self, line: str | None, record: dict) -> None:
        if not self.active:
            return
        if line is not None:
            self._main.write(line + "\n")
            self._main.flush()  # a crash must not lose what was already logged
        record = {key: _finite_or_none(value) for key, value in record.items()}
        self._jsonl.write(json.dumps(record, allow_nan=False, default=str) + "\n")
        self._jsonl.flush()

    def log_train(self, step: int, loss: float, lr: float, grad_norm: float, **extra) -> None:
        self._write(f"s:{step} trl:{loss:f} lr:{lr:f} norm:{grad_norm:f}",
                    {"step": step, "kind": "train", "time": time.time(), "loss": loss, "lr": lr,
                     "grad_norm": grad_norm, **extra})

    def log_val(self, step: int, loss: float, **extra) -> None:
        self._write(f"s:{step} tel:{loss:f}", {"step": step, "kind": "val", "time": time.time(), "loss": loss, **extra})

    def log_eval(self, step: int, accuracy: float, **extra) -> None:
        self._write(f"s:{step} eval:{accuracy:f}",
                    {"step": step, "kind": "eval", "time": time.time(), "accuracy": accuracy, **extra})

    def log_event(self, step: int, kind: str, **fields) -> None:
        """A JSONL-only record (config, samples, skipped updates, ...)."""
        self._write(None, {"step": step, "kind": kind, "time": time.time(), **fields})

    def close(self) -> None:
        for handle in (self._main, self._jsonl):
            if handle is not None:
                handle.close()
        self.active = False

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_FIELD_RE = re.compile(r"(\w+):(\S+)")


def parse_main_log(path: str | Path) -> dict[str, dict[int, float]]:
    """{'trl'|'tel'|'eval'|'lr'|'norm': {step: value}}, keeping the last value per step (restarts re-log steps)."""
    series: dict[str, dict[int, float]] = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        fields = dict(_FIELD_RE.findall(line))
        if "s" not in fields:
            continue
        try:
            step = int(fields.pop("s"))
            for key, value in fields.items():
                series.setdefault(key, {})[step] = float(value)
        except ValueError:
            continue  # a garbled line (e.g. cut off by a crash)
    return series
