"""Who owns a run directory (`-o`): one run at a time (the lock of llmpy.runlock, held by rank 0 for the whole run),
and a new run never mixes with another run's files. An `-o` that holds checkpoints is refused unless `-y 1` continues
them or `--overwrite 1` moves them aside to `-o.oldN`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from llmpy.distributed import Distributed, broadcast_object
from llmpy.errors import LlmpyError
from llmpy.runlock import RunLock


def claim_run_dir(run_dir: str | Path, resume: bool, overwrite: bool, job: Distributed,
                  print_fn: Callable[..., None] = print) -> RunLock | None:
    """Lock -o for this run (a live run's -o is refused) and see that a new run never mixes with another run's
    files: an -o holding checkpoints is refused unless -y 1 continues them or --overwrite 1 moves them aside (said).
    Rank 0 locks, looks and moves, and gets the lock to release when the run ends (None elsewhere); every rank gets
    its verdict."""
    run_dir = Path(run_dir)
    lock, error = None, None
    if job.is_main:
        try:
            lock = _claim(run_dir, resume, overwrite, print_fn)
        except (LlmpyError, OSError) as exc:
            error = str(exc) if isinstance(exc, LlmpyError) else f"-o {run_dir}: {exc}"
    error = broadcast_object(error)
    if error is not None:
        raise LlmpyError(error)
    return lock


def _claim(run_dir: Path, resume: bool, overwrite: bool, print_fn: Callable[..., None]) -> RunLock:
    if run_dir.exists() and not run_dir.is_dir():
        raise LlmpyError(f"-o {run_dir}: a file, not a run directory")
    lock = RunLock.acquire(run_dir, print_fn)  # before looking: what is there stays as seen until the run ends
    try:
        moved = _move_aside_if_asked(run_dir, resume, overwrite)
    except BaseException:
        lock.release()
        raise
    if moved is None:
        return lock
    lock.moved_to(moved)  # its lock file went along: removed there once -o, now empty, is locked again
    print_fn(f"--overwrite 1: the run that was in {run_dir} is now in {moved}")
    try:
        return RunLock.acquire(run_dir, print_fn)
    finally:
        lock.release()


def _move_aside_if_asked(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Where the run in `run_dir` was moved by --overwrite 1 (None: nothing to move); refused without the flag."""
    markers = sorted(p.name for p in run_dir.glob("DONE_*"))
    if resume or not markers:
        return None
    if not overwrite:
        raise LlmpyError(f"-o {run_dir} holds another run's checkpoints ({', '.join(markers[-2:])}): continue that "
                         "run with -y 1, give a new -o, or add --overwrite 1 to move it aside")
    n = 1
    while run_dir.with_name(f"{run_dir.name}.old{n}").exists():
        n += 1
    target = run_dir.with_name(f"{run_dir.name}.old{n}")
    run_dir.rename(target)
    return target
