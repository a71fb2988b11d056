"""Documents -> tokens -> llm.c shards at FineWeb scale: parallel, ordered, bounded in memory, restartable.

Tokenization runs in a process pool on batches of documents; results are consumed in submission order, so the
output is byte-identical for any worker count. The writer fills `shard_size`-token shards (shard 0 = val unless the
source has its own val documents), each written to a temp file and renamed into place. After every shard the
manifest records where the stream stands (next document, tokens of it already written), so a re-run after a crash
or Ctrl-C skips the complete shards and continues; a shard without its manifest entry is never trusted.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import re
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
    """Processes started inside inherit an ignored SIGINT, so a Ctrl-C while they start up (before the pool's
    initializer runs) prints no traceback of theirs; this process keeps its own handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


def make_out_dir(out_dir: Path) -> None:
    """Create the output directory; a one-line error where a file is in the way or it cannot be made."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LlmpyError(f"{out_dir}: a file is there, not a directory; give another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, a read-only file system
        raise LlmpyError(f"{out_dir}: cannot create the output directory ({exc.strerror or exc}); "
                         "give another --out") from None


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
    def fresh(cls, out_dir: Path, name: str, shard_size: int, settings: dict) -> "ShardedOutput":
        """Start over: shards of this name left by an earlier run go first (a glob would otherwise mix them in).
        Refused where the manifest is another preparation's: replacing it would leave its shards unaccounted for."""
        make_out_dir(out_dir)
        pattern = shard_pattern(name)
        _refuse_other_manifest(out_dir, name, pattern)
        stale = [p for p in out_dir.iterdir() if pattern.fullmatch(p.name)]
        (out_dir / MANIFEST).unlink(missing_ok=True)  # first: no manifest may vouch for half-deleted shards
        for path in stale:
            path.unlink()
        if stale:
            print(f"llmpy: removed {len(stale)} shard(s) of an earlier run from {out_dir}", file=sys.stderr)
        return cls.open(out_dir, name, shard_size, settings)

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
        atomic_write_bytes(self.out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
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
