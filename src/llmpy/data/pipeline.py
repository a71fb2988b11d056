"""Documents -> tokens -> llm.c shards at FineWeb scale: parallel, ordered, bounded in memory, restartable.

Tokenization runs in a process pool on batches of documents; results are consumed in submission order, so the
output is byte-identical for any worker count. The writer fills `shard_size`-token shards (shard 0 = val unless the
source has its own val documents), each written to a temp file and renamed into place. After every shard the
manifest records where the stream stands (next document, tokens of it already written), so a re-run after a crash
or Ctrl-C skips the complete shards and continues; a shard without its manifest entry is never trusted.

A preparation that starts over (tiny Shakespeare, local text) is written `beside` the data set in its directory, in a
hidden staging directory, and replaces it only once complete: a failed, interrupted or killed run leaves the earlier
data set as it was.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llmpy.data.manifest import MANIFEST, read_manifest
from llmpy.data.shards import HEADER_BYTES, read_shard, write_shard
from llmpy.errors import LlmpyError
from llmpy.runlock import RunLock
from llmpy.atomic import atomic_write_bytes, sha256_of
from llmpy.gpt2 import EOT_TOKEN
from llmpy.tokenizer import GPT2Tokenizer


# ---------------------------------------------------------------- tokenization

_worker_tokenizer: GPT2Tokenizer | None = None


def _init_worker(bpe_file: str, in_pool: bool = False) -> None:
    global _worker_tokenizer
    if in_pool:  # Ctrl-C reaches the whole process group: the main process stops the pool, with one line
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_tokenizer = GPT2Tokenizer(Path(bpe_file))


@contextlib.contextmanager
def _sigint_ignored_by_children():
    """Processes started inside start with SIGINT blocked (the mask survives fork and exec) until the pool's
    initializer ignores it, so a Ctrl-C while they start up prints no traceback of theirs. In this process it is
    blocked too, not ignored: a Ctrl-C that comes meanwhile is delivered on leaving (ignoring it lost it, and a
    quickstart went on to train). Where there are no signal masks, SIGINT is ignored meanwhile, as before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not hasattr(signal, "pthread_sigmask"):
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _encode_task(documents: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """EOT + tokens for each document, concatenated as uint16, and each document's length (0 for a None: a
    skipped record keeps its place in the count that a resume skips by, but adds no tokens)."""
    encoded = [None if text is None else _worker_tokenizer.encode(text) for text in documents]  # one thread each
    lengths = np.fromiter((0 if ids is None else len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
    tokens = np.empty(int(lengths.sum()), dtype=np.uint16)
    position = 0
    for ids, length in zip(encoded, lengths):
        if ids is None:
            continue
        tokens[position] = EOT_TOKEN
        tokens[position + 1: position + length] = ids
        position += length
    return tokens, lengths


def tokenize_batches(batches: Iterable[list[str]], bpe_file: Path, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, per-document lengths) for each batch of documents, in input order, with `workers` processes."""
    if workers <= 1:
        _init_worker(str(bpe_file))
        yield from map(_encode_task, batches)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads or CUDA
    with _sigint_ignored_by_children():
        pool = context.Pool(workers, initializer=_init_worker, initargs=(str(bpe_file), True))
    with pool:
        in_flight: collections.deque = collections.deque()
        for batch in batches:
            in_flight.append(pool.apply_async(_encode_task, (batch,)))
            if len(in_flight) >= 2 * workers:  # backpressure: memory stays bounded however long the stream
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


# ---------------------------------------------------------------- resumable sharded output

def shard_pattern(name: str) -> re.Pattern:
    """The file names of the shards of prefix `name`: {name}_{train|val}_{index:06d}.bin."""
    return re.compile(rf"{re.escape(name)}_(train|val)_\d{{6}}\.bin")


def make_out_dir(out_dir: Path) -> bool:
    """Create the output directory (True: it was not there); a one-line error where a file is in the way or it cannot
    be made."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LlmpyError(f"{out_dir}: a file is there, not a directory; give another --out")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, a read-only file system
        raise LlmpyError(f"{out_dir}: cannot create the output directory ({exc.strerror or exc}); "
                         "give another --out") from None
    return created


def _refuse_other_manifest(out_dir: Path, name: str, pattern: re.Pattern) -> None:
    """A one-line error when `out_dir`'s manifest lists shards of another prefix (the only record of where they came
    from). An unreadable manifest vouches for nothing and is replaced."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return
    try:
        previous = read_manifest(path)
    except LlmpyError:
        return
    others = [shard["file"] for shard in previous["shards"] if not pattern.fullmatch(shard["file"])]
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise LlmpyError(f"{path} describes other shards ({others[0]}{more}); preparing {name!r} here would replace "
                         "their record, so give another --out (one directory per data set)")


def _say(line: str) -> None:
    print(f"llmpy: {line}", file=sys.stderr)


@contextlib.contextmanager
def locked_out_dir(out_dir: Path) -> Iterator[None]:
    """One prepare at a time in `out_dir` (created if missing): `.prepare.lock` there, held for the block, refuses
    a second prepare in one line naming the first (llmpy.runlock)."""
    make_out_dir(out_dir)
    lock = RunLock.acquire(out_dir, _say, kind="prepare")
    try:
        yield
    finally:
        lock.release()


def staging_dir(out_dir: Path, name: str) -> Path:
    """Where a data set of prefix `name` is written before it replaces the one in `out_dir`: hidden, inside it (the
    same file system, so the move is a rename; `out_dir/*.bin` never matches inside it)."""
    return out_dir / f".{name}.preparing"


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def move_into_place(staging: Path, out_dir: Path, name: str) -> int:
    """Replace `out_dir`'s shards of `name` by the complete data set in `staging`; returns how many shards of `name`
    were there before. First `out_dir`'s manifest becomes the new one marked incomplete (so nothing trains on a mix),
    then the shards move, then the staged manifest replaces it: a run killed in between is finished by the next
    prepare (`finish_interrupted_move`)."""
    manifest = read_manifest(staging / MANIFEST)
    new = {shard["file"] for shard in manifest["shards"]}
    pattern = shard_pattern(name)
    old = [path for path in out_dir.iterdir() if pattern.fullmatch(path.name)]
    atomic_write_bytes(out_dir / MANIFEST, _manifest_bytes({**manifest, "complete": False}))
    for path in old:
        if path.name not in new:
            path.unlink()
    for file in sorted(new):
        if (staging / file).is_file():  # else moved already, by the run that was killed
            os.replace(staging / file, out_dir / file)
    os.replace(staging / MANIFEST, out_dir / MANIFEST)
    shutil.rmtree(staging, ignore_errors=True)
    return len(old)


def finish_interrupted_move(out_dir: Path, name: str) -> None:
    """Finish the move into `out_dir` that a killed prepare began (its staged manifest is complete), or remove what
    a prepare that failed or was killed before completing left in the staging directory."""
    staging = staging_dir(out_dir, name)
    if not staging.is_dir():
        return
    try:
        complete = read_manifest(staging / MANIFEST)["complete"]
    except LlmpyError:  # none yet, or cut short: the run stopped before its data set was complete
        complete = False
    if not complete:
        shutil.rmtree(staging)
        return
    move_into_place(staging, out_dir, name)
    print(f"llmpy: finished moving the data set that an interrupted prepare completed into {out_dir}",
          file=sys.stderr)


@dataclass
class StreamPosition:
    """Where the train stream stands after the last complete shard."""

    next_document: int = 0  # first document not fully written
    document_offset: int = 0  # tokens of that document (counting its EOT) already written


@dataclass
class ShardedOutput:
    """Writes `{name}_{split}_{index:06d}.bin` shards and keeps the manifest current after each one."""

    out_dir: Path
    name: str
    shard_size: int
    settings: dict  # what must match for a re-run to continue this output (source, tokenizer, shard size)
    shards: list[dict] = field(default_factory=list)
    position: StreamPosition = field(default_factory=StreamPosition)
    complete: bool = False
    final_dir: Path | None = None  # of an output staged `beside` a data set: where `finish()` moves it

    @classmethod
    def open(cls, out_dir: Path, name: str, shard_size: int, settings: dict) -> "ShardedOutput":
        """Start fresh, or pick up a previous run of the same settings where its manifest says it stopped."""
        if shard_size <= 0:
            raise LlmpyError(f"--shard-size must be positive, got {shard_size}")
        make_out_dir(out_dir)
        output = cls(out_dir, name, shard_size, settings)
        path = out_dir / MANIFEST
        if path.is_file():
            previous = read_manifest(path)
            if previous["settings"] != settings:
                raise LlmpyError(
                    f"{path}: this directory was prepared with other settings ({previous.get('settings')}); "
                    "use another --out or delete it"
                )
            output.shards = previous["shards"]
            output.position = StreamPosition(**previous["position"])
            output.complete = previous["complete"]
        for stray in out_dir.glob(f".{name}_*.tmp*"):  # a temp file from an interrupted write
            stray.unlink()
        return output

    @classmethod
    @contextlib.contextmanager
    def beside(cls, out_dir: Path, name: str, shard_size: int, settings: dict) -> Iterator["ShardedOutput"]:
        """A fresh output written beside the data set in `out_dir` (in its staging directory), which stays as it was
        until `finish()` replaces it; a block that fails (an error, Ctrl-C) removes the staged output. Refused where
        the manifest is another preparation's: replacing it would leave its shards unaccounted for."""
        created = make_out_dir(out_dir)
        lock = RunLock.acquire(out_dir, _say, kind="prepare")
        output = cls(staging_dir(out_dir, name), name, shard_size, settings, final_dir=out_dir)
        try:
            finish_interrupted_move(out_dir, name)
            _refuse_other_manifest(out_dir, name, shard_pattern(name))
            make_out_dir(output.out_dir)
            yield output
        except BaseException:
            if not output.complete:  # a complete one is moving into place: the next prepare finishes the move
                shutil.rmtree(output.out_dir, ignore_errors=True)
                lock.release()
                if created:
                    with contextlib.suppress(OSError):
                        out_dir.rmdir()
            raise
        finally:
            lock.release()

    def finish(self) -> dict:
        """Mark the output complete and return its manifest; a staged output then replaces the one in `final_dir`."""
        self.complete = True
        manifest = self.save()
        if self.final_dir is not None:
            replaced = move_into_place(self.out_dir, self.final_dir, self.name)
            if replaced:
                print(f"llmpy: replaced the earlier data set in {self.final_dir} ({replaced} shard(s))",
                      file=sys.stderr)
        return manifest

    @property
    def next_index(self) -> int:
        return 1 + max((s["index"] for s in self.shards), default=0)

    def has_val(self) -> bool:
        return any(s["split"] == "val" for s in self.shards)

    def write(self, split: str, index: int, tokens: np.ndarray, position: StreamPosition | None = None) -> None:
        path = self.out_dir / f"{self.name}_{split}_{index:06d}.bin"
        write_shard(path, tokens)
        self.shards.append({"file": path.name, "split": split, "index": index, "tokens": int(tokens.size),
                            "sha256": sha256_of(path)})
        if position is not None:
            self.position = position
        self.save()

    def save(self) -> dict:
        manifest = {
            "settings": self.settings, "complete": self.complete, "position": vars(self.position),
            "shards": self.shards,
            "total_tokens": {split: sum(s["tokens"] for s in self.shards if s["split"] == split)
                             for split in ("val", "train")},
        }
        atomic_write_bytes(self.out_dir / MANIFEST, _manifest_bytes(manifest))
        return manifest


def write_stream(
    output: ShardedOutput, batches: Iterable[tuple[np.ndarray, np.ndarray]], *, start: StreamPosition,
    val_from_stream: bool, max_tokens: int | None = None, progress: tqdm | None = None,
) -> None:
    """Cut the token stream into shards; shard 0 is val when `val_from_stream`. Records the position per shard."""
    buffer = np.empty(output.shard_size, dtype=np.uint16)
    filled = 0
    document, skip = start.next_document, start.document_offset
    budget = max_tokens - sum(s["tokens"] for s in output.shards) if max_tokens else None
    for tokens, lengths in batches:
        cursor = skip  # drop what the previous run already wrote of the first document
        skip = 0
        while cursor < tokens.size:
            take = min(output.shard_size - filled, tokens.size - cursor)
            if budget is not None:
                take = min(take, budget)
            buffer[filled: filled + take] = tokens[cursor: cursor + take]
            filled, cursor = filled + take, cursor + take
            if budget is not None:
                budget -= take
            if filled == output.shard_size or budget == 0:
                position = _position_after(cursor, lengths, document)
                split = "val" if val_from_stream and not output.has_val() else "train"
                output.write(split, 0 if split == "val" else output.next_index, buffer[:filled].copy(), position)
                if progress is not None:
                    progress.update(filled)
                filled = 0
                if budget == 0:
                    return
        document += lengths.size
    if filled:
        split = "val" if val_from_stream and not output.has_val() else "train"
        output.write(split, 0 if split == "val" else output.next_index, buffer[:filled].copy(),
                     StreamPosition(document, 0))
        if progress is not None:
            progress.update(filled)


def _position_after(cursor: int, lengths: np.ndarray, first: int) -> StreamPosition:
    """The stream position once the first `cursor` tokens of a batch (documents first, first+1, ...) are written."""
    ends = np.cumsum(lengths)
    within = int(np.searchsorted(ends, cursor, side="right"))  # documents of this batch fully written
    if within == lengths.size:
        return StreamPosition(first + within, 0)
    start = int(ends[within - 1]) if within else 0
    return StreamPosition(first + within, cursor - start)


def verify_output(out_dir: str | Path) -> list[str]:
    """Check every shard in the manifest (size, header, SHA-256); returns one line per problem (empty: all good)."""
    out = Path(out_dir)
    path = out / MANIFEST
    if not path.is_file():
        raise LlmpyError(f"{path}: no manifest to verify against")
    manifest = read_manifest(path, fix="the shards cannot be checked without it; prepare the directory again")
    problems = []
    for shard in manifest["shards"]:
        file = out / shard["file"]
        if not file.is_file():
            problems.append(f"{file}: missing")
            continue
        if file.stat().st_size != HEADER_BYTES + 2 * shard["tokens"]:
            problems.append(f"{file}: {file.stat().st_size} bytes, expected {HEADER_BYTES + 2 * shard['tokens']}")
            continue
        try:
            read_shard(file)
        except LlmpyError as exc:
            problems.append(str(exc))
            continue
        if sha256_of(file) != shard["sha256"]:
            problems.append(f"{file}: SHA-256 differs from the manifest (the file changed after it was written)")
    if not manifest["complete"]:
        problems.append(f"{path}: the preparation did not finish; re-run the same prepare command to complete it")
    return problems
