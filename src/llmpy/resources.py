"""Where llmpy finds the files it needs (GPT-2 BPE, HellaSwag, tiny Shakespeare): one order for every command.

1. the command's flag (e.g. `--hellaswag-file`, `--tokenizer`, `prepare --input`)
2. the resource's environment variable ($LLMPY_GPT2_BPE, $LLMPY_HELLASWAG, $LLMPY_TINYSHAKESPEARE)
3. ./data/<file>, where `llmpy prepare` writes (data/hellaswag/hellaswag_val.jsonl, data/gpt2.tiktoken, ...)
4. the llmpy cache ($LLMPY_CACHE, default ~/.cache/llmpy)
5. a download into the cache, unless $LLMPY_OFFLINE is set

A flag or variable may name the file or the directory holding it. The pick is said in one line on stderr (once per
file, by rank 0); a file named by a flag or variable that is not there is an error, never skipped; a miss everywhere is
one error that names the flag of the command in use and every other way to provide the file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmpy.config import default_cache_dir
from llmpy.errors import LlmpyError

LOCAL_DATA_DIR = Path("data")  # relative to the working directory: `llmpy prepare`'s default output
CACHE_ORIGIN = "llmpy cache"
DOWNLOADED = "downloaded into the llmpy cache"


def offline() -> bool:
    """True when $LLMPY_OFFLINE asks llmpy never to try the network."""
    return os.environ.get("LLMPY_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Resource:
    """A file llmpy can find by itself: its name in messages, variable, place under ./data and name in the cache."""

    label: str
    env_var: str
    local: str  # path under ./data
    cache_name: str
    prepared_by: str = ""  # the command that writes the ./data copy, if one does

    @property
    def file_name(self) -> str:
        return Path(self.local).name

    def local_path(self) -> Path:
        return LOCAL_DATA_DIR / self.local

    def cache_path(self) -> Path:
        return default_cache_dir() / self.cache_name


GPT2_BPE = Resource("GPT-2 BPE", "LLMPY_GPT2_BPE", "gpt2.tiktoken", "gpt2.tiktoken")
HELLASWAG_VAL = Resource("HellaSwag val set", "LLMPY_HELLASWAG", "hellaswag/hellaswag_val.jsonl",
                         "hellaswag_val.jsonl", prepared_by="llmpy prepare hellaswag --input FILE")
TINYSHAKESPEARE = Resource("tiny Shakespeare", "LLMPY_TINYSHAKESPEARE", "tinyshakespeare.txt", "tinyshakespeare.txt")

Fetch = Callable[[Path], bool]  # writes the cache file (and says where from); False when it could not
Check = Callable[[Path, str], None]  # raises LlmpyError naming the file and its origin when it is unusable

_announced: set[tuple[str, Path]] = set()  # several components resolve the same file in one command: say it once


def _named(path: Path, resource: Resource) -> Path:
    """A named directory stands for the resource's file inside it (e.g. --hellaswag-file data/hellaswag)."""
    inside = path / resource.file_name
    return inside if path.is_dir() and inside.is_file() else path


def _local_candidates(resource: Resource, explicit: str | Path | None, flag: str | None):
    """(path, origin, named) in the resolution order, downloads excepted."""
    if explicit:
        yield _named(Path(explicit), resource), flag or "explicit path", True
    if os.environ.get(resource.env_var):
        yield _named(Path(os.environ[resource.env_var]), resource), f"${resource.env_var}", True
    yield resource.local_path(), "./data", False
    yield resource.cache_path(), CACHE_ORIGIN, False


def announce(resource: Resource, path: Path, origin: str) -> None:
    """One line on stderr saying which file a command uses and why; rank 0 only, once per file."""
    if os.environ.get("RANK", "0") != "0" or (resource.label, path) in _announced:
        return
    _announced.add((resource.label, path))
    how = {DOWNLOADED: DOWNLOADED, CACHE_ORIGIN: f"from the {CACHE_ORIGIN}"}.get(origin, f"from {origin}")
    print(f"{resource.label}: {path} ({how})", file=sys.stderr)


def find(resource: Resource, explicit: str | Path | None = None, flag: str | None = None,
         fetchers: Sequence[Fetch] = (), check: Check | None = None) -> Path | None:
    """The resource's file in the order of the module docstring, announced; None when nothing has it."""
    for path, origin, named in _local_candidates(resource, explicit, flag):
        if path.is_file():
            if check is not None:
                check(path, origin)
            announce(resource, path, origin)
            return path
        if named:
            raise LlmpyError(f"{path} ({origin}): no such {resource.label} file")
    target = resource.cache_path()
    if not offline():
        for fetch in fetchers:
            if fetch(target):
                if check is not None:
                    check(target, DOWNLOADED)
                _announced.add((resource.label, target))  # the fetcher has said where the file came from
                return target
    return None


def not_found_error(resource: Resource, flag: str | None, downloads: int, online: str = "") -> LlmpyError:
    """The error for a resource found nowhere: every way to provide it, starting with the command's own flag."""
    if offline():
        why = " and LLMPY_OFFLINE is set, so nothing was downloaded"
    elif downloads:
        why = f" and the download{'s' if downloads > 1 else ''} failed"
    else:
        why = ""
    local = str(resource.local_path())
    if resource.prepared_by:
        local += f" (`{resource.prepared_by}` writes it there)"
    ways = ([f"pass {flag} FILE"] if flag else []) + [
        f"set {resource.env_var}=/path/to/{resource.file_name}", f"put it at {local} or {resource.cache_path()}",
    ]
    if downloads:
        ways.append(f"run once with internet access{f' ({online})' if online else ''}")
    return LlmpyError(f"{resource.label} ({resource.file_name}) not found{why}: {', '.join(ways[:-1])}, or {ways[-1]}")


def locate(resource: Resource, explicit: str | Path | None = None, flag: str | None = None,
           fetchers: Sequence[Fetch] = (), check: Check | None = None, online: str = "") -> Path:
    """`find`, or the one-line error saying how to provide the file (`online`: what a download would fetch)."""
    path = find(resource, explicit, flag, fetchers, check)
    if path is None:
        raise not_found_error(resource, flag, len(fetchers), online)
    return path


def offline_note() -> str:
    """One line for an offline user: the variables that point llmpy at local copies, and where else it looks."""
    copies = ", ".join(f"{r.env_var}=/path/to/{r.file_name}" for r in (GPT2_BPE, TINYSHAKESPEARE, HELLASWAG_VAL))
    return (f"note: LLMPY_OFFLINE is set, so llmpy downloads nothing and reads local copies: {copies} (a file or its "
            f"directory), else ./data or the llmpy cache (LLMPY_CACHE, now {default_cache_dir()})")


def default_help(resource: Resource) -> str:
    """The `(default: ...)` of a flag that names this resource's file, for --help."""
    return f"(default: ${resource.env_var}, else {resource.local_path()}, the llmpy cache, or a download)"
