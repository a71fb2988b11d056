"""One writer per run directory (and per data directory: `llmpy prepare` takes the same kind of lock on its --out,
in `.prepare.lock`). A training run (rank 0 of a job) holds an exclusive lock on its `-o` from before it
looks at the directory until it ends: the file `run.lock` there names the holder (pid, host, start, command) and is
locked with flock(2) through a descriptor kept open for the run's life. The kernel drops a flock when its process
dies, however it dies (kill -9 included), so a lock file whose flock is free was left by a run that died: the next run
takes it over and says so. A run that ends (done, failed, stopped by a signal) removes the file.

flock is only as good as the filesystem's: on a local disk it holds for every process of the host; on NFS and Lustre it
depends on the mount (local-only or unsupported), so two hosts must never be pointed at one `-o` there. Where flock is
unsupported, the file alone is checked: a holder on this host counts while its pid runs; one on another host cannot be
checked, and is refused until its file is deleted."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import weakref
from datetime import datetime
from pathlib import Path
from typing import Callable, NamedTuple

from llmpy.errors import LlmpyError

class LockKind(NamedTuple):
    file: str  # the lock file's name in the directory
    directory: str  # what the directory is, in messages
    writer: str  # what holds it, in messages


LOCKS = {
    "run": LockKind("run.lock", "run directory", "run"),  # llmpy train's -o
    "prepare": LockKind(".prepare.lock", "data directory", "prepare"),  # llmpy prepare's --out
}
LOCK_FILE = LOCKS["run"].file
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # what flock(2) raises where the filesystem has none
MAX_RECORD = 1 << 16


def process_running(pid: int) -> bool:
    """Whether process `pid` exists on this host (this one counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


class RunLock:
    """The exclusive lock on one run directory, held from `acquire` until `release` (or this process's end)."""

    def __init__(self, path: Path, fd: int) -> None:
        self._held = {"path": path, "fd": fd, "pid": os.getpid()}
        self._finalizer = weakref.finalize(self, _release, self._held)  # also at exit, or when dropped unreleased

    @classmethod
    def acquire(cls, run_dir: str | Path, say: Callable[[str], None] = print, kind: str = "run") -> RunLock:
        """Lock `run_dir` (created if missing) for a `kind` of writer (a key of LOCKS), or raise LlmpyError naming
        the live holder, with nothing in the directory changed. `say` gets one line when a stale lock is taken over
        or the filesystem has no flock."""
        path = Path(run_dir) / LOCKS[kind].file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, has_flock = _open_locked(path, say)
        try:
            previous = os.pread(fd, MAX_RECORD, 0)
            if not has_flock:
                _check_without_flock(path, previous)
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": datetime.now().astimezone().isoformat(timespec="seconds"), "command": sys.argv}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        if previous:
            kind = _kind_of(path)
            say(f"{kind.directory} {path.parent}: took over a stale lock from {_describe(previous)}, a {kind.writer} "
                "that ended without releasing it (killed?)")
        return cls(path, fd)

    def moved_to(self, run_dir: str | Path) -> None:
        """The locked directory was renamed to `run_dir` (--overwrite 1 moving a run aside): release there."""
        self._held["path"] = Path(run_dir) / LOCK_FILE

    def release(self) -> None:
        """Remove the lock file and drop the lock (once; later calls do nothing)."""
        self._finalizer()


def _release(held: dict) -> None:
    """Remove the lock file if it is still the one locked, and close the descriptor (which drops the flock)."""
    if held["pid"] != os.getpid():  # a forked child at its exit: the lock is its parent's
        return
    with contextlib.suppress(OSError):
        if os.path.samestat(os.stat(held["path"]), os.fstat(held["fd"])):  # still this lock's file
            os.unlink(held["path"])
    os.close(held["fd"])


def _open_locked(path: Path, say: Callable[[str], None]) -> tuple[int, bool]:
    """An open descriptor of `path`, flock'ed: (fd, True); (fd, False) where the filesystem has no flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, MAX_RECORD, 0))
            os.close(fd)
            raise LlmpyError(_in_use(path, holder)) from None
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                os.close(fd)
                raise
            where = _kind_of(path).directory
            say(f"warning: {where} {path.parent}: its filesystem has no flock ({os.strerror(exc.errno)}), so "
                f"the lock is a pid+host file only: never point two hosts at one {where}")
            return fd, False
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                return fd, True
        os.close(fd)  # its holder released it (and removed the file) between our open and flock: open it again


def _check_without_flock(path: Path, previous: bytes) -> None:
    """Without flock: refuse a lock file whose holder may be running (on this host: its pid runs; elsewhere: unknown)."""
    if not previous:
        return
    record = _parse(previous)
    if record is not None and record["host"] == socket.gethostname():
        if not process_running(record["pid"]):
            return
        raise LlmpyError(_in_use(path, _describe(previous)))
    raise LlmpyError(_in_use(path, _describe(previous)) + f"; if that {_kind_of(path).writer} is over, delete {path}")


def _kind_of(path: Path) -> LockKind:
    return next(kind for kind in LOCKS.values() if kind.file == path.name)


def _in_use(path: Path, holder: str) -> str:
    kind = _kind_of(path)
    return (f"{kind.directory} {path.parent} is in use by another {kind.writer}: {holder} ({path}); wait for it to "
            f"end or stop it, or use another {kind.directory}")


def _parse(raw: bytes) -> dict | None:
    """A lock file's record {pid: int, host: str, started: str, ...}, or None when unreadable."""
    try:
        record = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(record, dict) and type(record.get("pid")) is int and isinstance(record.get("host"), str)
            and isinstance(record.get("started"), str)):
        return None
    return record


def _describe(raw: bytes) -> str:
    """'pid 123 on host h since 2026-12-07T10:00:00+00:00', one line, from a lock file's bytes."""
    record = _parse(raw)
    if record is None:
        return "a process its lock file does not name" if raw else "a process that is just taking it"
    return " ".join(f"pid {record['pid']} on host {record['host']} since {record['started']}".split())
