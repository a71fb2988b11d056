"""Files that appear whole or not at all (temp file + rename), and their SHA-256. The one writer every module uses.

A write that runs out of disk space is one line naming the file, what it needs and what is free (`DiskFullError`),
however the writer reports it: an ENOSPC/EDQUOT OSError, or torch's zip writer's RuntimeError ("unexpected pos ...")."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from llmpy.errors import DiskFullError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# below this much free space, a writer's own error is taken for a full disk: one stopped by it leaves less free
# than the last buffer it could not write
NEARLY_FULL_BYTES = 1 << 20


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def free_bytes(directory: str | Path) -> int:
    """Bytes this user may still write on the filesystem holding `directory`."""
    return shutil.disk_usage(directory).free


def readable_size(size: int | float) -> str:
    """Bytes for people, in decimal units as `df -H` gives them: 87 bytes, 12.3 KB, 41.2 MB, 3.5 GB."""
    if size < 1e3:
        return f"{int(size)} byte{'' if int(size) == 1 else 's'}"
    for unit, scale in (("KB", 1e3), ("MB", 1e6)):
        if round(size / scale, 1) < 1e3:  # never "1000.0 KB"
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e9:.1f} GB"


def disk_full_error(what: str | Path, needed: int | None, directory: str | Path,
                    at_least: bool = False) -> DiskFullError:
    """The one-line error for `needed` bytes (`at_least`: a lower bound; None: unknown) that do not fit in
    `directory`."""
    free = f"{readable_size(free_bytes(directory))} free"
    needs = "" if needed is None else f"needs {'more than ' if at_least else ''}{readable_size(needed)}, "
    return DiskFullError(f"no space left on device writing {what} ({needs}{free})")


def check_free_space(what: str | Path, needed: int, directory: str | Path) -> None:
    """Refuse (DiskFullError) before writing anything when `needed` bytes are more than `directory` has free."""
    if needed > free_bytes(directory):
        raise disk_full_error(what, needed, directory)


def ran_out_of_space(exc: BaseException, directory: str | Path, remaining: int = 0) -> bool:
    """Whether a failed write stopped on a full disk: an ENOSPC/EDQUOT OSError in the exception's chain, or a
    RuntimeError (torch's zip writer hides the OSError behind "unexpected pos ...") while fewer bytes are free
    than the `remaining` ones the write still needed, or next to none."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, RuntimeError) and free_bytes(directory) < max(remaining, NEARLY_FULL_BYTES)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: int | None = None, size: int | None = None) -> Iterator[BinaryIO]:
    """A binary file handle whose contents appear at `path` only when the block ends without an exception.

    Readers see the old file or the new one, never a partial one; a failed write (a full disk, a kill before the
    rename) leaves no temporary file behind. The temporary name is hidden and per process, so two writers of the
    same path never share one. `mode`: the file's permissions (default: what open() gives, 0666 less the umask).
    `size`: the bytes about to be written, when known: more than the disk has free is refused before writing.
    A full disk is a DiskFullError, however the writer in the block reports it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:
        check_free_space(path, size, path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
        # a writer that reopens the temp file by name (safetensors) may have created it private (0600)
        os.chmod(tmp, _ordinary_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        if not ran_out_of_space(exc, path.parent, (size or 0) - written):
            raise
        tmp.unlink(missing_ok=True)  # first, so that the free space said is what the user has
        # past the size it was told (or not told one), the write needs more than it got down: say at least that
        raise disk_full_error(path, max(size or 0, written), path.parent, at_least=written >= (size or 0)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _ordinary_file_mode() -> int:
    """What open() gives a new file: 0666 less the process's umask (which can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, size=len(data)) as handle:
        handle.write(data)
