"""Run logs: `main.log` in llm.c's line layout (llm.c's plotting tools read it) and `metrics.jsonl` with everything."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TextIO

from llmpy.metrics.sinks import MetricSink, build_sinks


def _json_value(value: Any) -> Any:
    """A JSON-safe value: NaN/inf become null, tensor and numpy scalars become Python numbers."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # 0-d torch tensor or numpy scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    return value


def _append(handle, text: str) -> None:
    """Write and flush (a crash must not lose lines already logged); a full disk is the one-line disk-full error."""
    try:
        handle.write(text)
        handle.flush()
    except OSError as exc:
        raise _as_disk_full(handle, exc, len(text))


def _as_disk_full(handle, exc: OSError, needed: int | None) -> OSError:
    """The one-line disk-full error (caused by `exc`) for a failed write of `needed` bytes (None: unknown) to
    `handle`, when the disk is full; else `exc` itself."""
    from llmpy.atomic import disk_full_error, ran_out_of_space

    directory = Path(handle.name).parent
    if not ran_out_of_space(exc, directory):
        return exc
    error = disk_full_error(handle.name, needed, directory, at_least=True)
    error.__cause__ = exc
    return error


def _open_log(path: Path, resume: bool) -> TextIO:
    """llm.c's rule: a resumed run (-y 1) appends, a fresh one starts the file over."""
    if not resume:
        return open(path, "w", encoding="utf-8")
    # a crash can leave a half-written last line; without a newline the first resumed line would be glued onto it
    cut_off = _ends_mid_line(path)
    handle = open(path, "a", encoding="utf-8")
    if cut_off:
        handle.write("\n")
    return handle


def _ends_mid_line(path: Path) -> bool:
    """True if `path` exists, is non-empty, and its last byte is not a newline."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(-1, 2)  # last byte only: the log may be large
        return handle.read(1) != b"\n"


class RunLogger:
    """Writes main.log and metrics.jsonl into a run directory; every method is a no-op when disabled (non-zero ranks).

    main.log uses llm.c's keys (trl, lr, norm, tel, eval) with C's %f (6 decimals); llm.c itself prints trl/tel/eval
    with %.4f, lr with %.6f and norm with %.2f, but its parsers only split on ':' and call float(): they read both."""

    def __init__(self, out_dir: str | Path | None, *, enabled: bool = True, resume: bool = False,
                 tensorboard_dir: str | Path | None = None, wandb_project: str | None = None,
                 run_config: dict | None = None) -> None:
        """`tensorboard_dir` / `wandb_project` (off by default) also send every record to TensorBoard / W&B."""
        self.active = bool(out_dir) and enabled
        self._main: TextIO | None = None
        self._jsonl: TextIO | None = None
        self._sinks: list[MetricSink] = []
        self._write_failed = False  # then close() keeps quiet: the failed write's error is the one to tell
        if self.active:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            self._main = _open_log(out / "main.log", resume)
            self._jsonl = _open_log(out / "metrics.jsonl", resume)
        if enabled:  # live monitoring works with or without a run directory, but only on the logging rank
            self._sinks = build_sinks(tensorboard_dir=tensorboard_dir, wandb_project=wandb_project,
                                      run_config=run_config, run_dir=out_dir)

    def log_train(self, step: int, loss: float, lr: float, grad_norm: float, **extra: Any) -> None:
        """One optimizer step: main.log line plus a JSONL record with `extra` (tokens_per_sec, mfu, step_ms, ...)."""
        self._write_main(f"s:{step} trl:{loss:f} lr:{lr:f} norm:{grad_norm:f}")
        self._write_record(step, "train", loss=loss, lr=lr, grad_norm=grad_norm, **extra)

    def log_val(self, step: int, loss: float, **extra: Any) -> None:
        """Validation loss at `step`."""
        self._write_main(f"s:{step} tel:{loss:f}")
        self._write_record(step, "val", loss=loss, **extra)

    def log_eval(self, step: int, accuracy: float, **extra: Any) -> None:
        """HellaSwag (or other eval) accuracy at `step`."""
        self._write_main(f"s:{step} eval:{accuracy:f}")
        self._write_record(step, "eval", accuracy=accuracy, **extra)

    def log_event(self, step: int, kind: str, **fields: Any) -> None:
        """A JSONL-only record: config, samples, skipped updates, ..."""
        self._write_record(step, kind, **fields)

    def _write_main(self, line: str) -> None:
        if self._main is not None:
            self._append(self._main, line + "\n")

    def _append(self, handle: TextIO, text: str) -> None:
        try:
            _append(handle, text)
        except OSError:
            self._write_failed = True
            raise

    def _write_record(self, step: int, kind: str, **fields: Any) -> None:
        """`time` in `fields`: when it happened (a step is logged after it ran); else now."""
        wall_time = fields.pop("time", None) or time.time()
        if self._jsonl is not None:
            record = _json_value({"step": step, "kind": kind, "time": wall_time, **fields})
            self._append(self._jsonl, json.dumps(record, allow_nan=False, default=str) + "\n")
        if self._sinks:
            values = _json_value(fields)  # NaN/inf become None, which sinks leave out
            for sink in self._sinks:
                sink.log(step, kind, values)

    def close(self) -> None:
        """Close both files and the monitoring sinks; later calls are no-ops. A full disk met here (the last buffered
        bytes) is the one-line disk-full error, raised once everything is closed; after a write that already failed
        (its text is still buffered, so closing retries it) nothing is raised: that write's error was the one."""
        error: OSError | None = None
        for handle in (self._main, self._jsonl):
            if handle is None:
                continue
            try:
                handle.close()  # the file is closed even when the flush before fails
            except OSError as exc:
                if error is None and not self._write_failed:
                    error = _as_disk_full(handle, exc, None)
        self._main = self._jsonl = None
        for sink in self._sinks:
            sink.close()
        self._sinks = []
        self.active = False
        if error is not None:
            raise error

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
