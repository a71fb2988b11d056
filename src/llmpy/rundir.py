"""Who owns a run directory (`-o`): a new run never mixes with another run's files. An `-o` that holds checkpoints is
refused unless `-y 1` continues them or `--overwrite 1` moves them aside to `-o.oldN`."""

from __future__ import annotations

from pathlib import Path

from llmpy.distributed import Distributed, broadcast_object
from llmpy.errors import LlmpyError


def claim_run_dir(run_dir: str | Path, resume: bool, overwrite: bool, job: Distributed) -> Path | None:
    """A new run never mixes with another run's files: an -o holding checkpoints is refused unless -y 1 continues
    them or --overwrite 1 moves them aside (returned). Rank 0 looks and moves; every rank gets its verdict."""
    run_dir = Path(run_dir)
    outcome = None
    if job.is_main:
        try:
            outcome = ("moved", _claim(run_dir, resume, overwrite))
        except (LlmpyError, OSError) as exc:
            outcome = ("error", str(exc) if isinstance(exc, LlmpyError) else f"-o {run_dir}: {exc}")
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise LlmpyError(outcome[1])
    return outcome[1]


def _claim(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    if run_dir.exists() and not run_dir.is_dir():
        raise LlmpyError(f"-o {run_dir}: a file, not a run directory")
    markers = sorted(p.name for p in run_dir.glob("DONE_*")) if run_dir.is_dir() else []
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
