"""Documents from local files: .txt (one per file), .jsonl / .jsonl.gz (one per line), .parquet (one per row).

Text is decoded strictly, in the encoding given (UTF-8 unless `prepare --encoding` says otherwise): a byte that does
not decode, or a NUL byte (binary data), is a one-line error naming the file and the byte offset, never a U+FFFD
quietly tokenized."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmpy.errors import LlmpyError

READ_BYTES = 1 << 20  # decoded per block
SNIFF_BYTES = 1 << 20  # what `check_input` decodes of each file before any output is touched
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")


@dataclass
class RecordTally:
    """Records read from jsonl/parquet/hub rows, and those skipped for lacking a string text field."""

    field: str = "text"
    read: int = 0
    skipped: int = 0
    first_skipped: str | None = None  # where, e.g. "docs.jsonl line 3"
    locate: Callable[[], str] | None = None  # finds `first_skipped` when the reader only knows a row number

    def skip(self, where: str | Callable[[], str]) -> None:
        """Count one skipped record; `where` (or a function that finds it) is kept for the first."""
        self.skipped += 1
        if self.skipped == 1:
            if callable(where):
                self.locate = where
            else:
                self.first_skipped = where

    def first(self) -> str:
        if self.first_skipped is None and self.locate is not None:
            self.first_skipped = self.locate()
        return self.first_skipped or "?"

    def report(self, where: str) -> None:
        """A line on stderr counting the skipped records; a one-line error when none of `where`'s was usable."""
        if self.read and self.skipped == self.read:
            records = f"{self.read:,} records" if self.read > 1 else "1 record"
            raise LlmpyError(f"{where}: none of the {records} has a string {self.field!r} field "
                             f"(first: {self.first()}); nothing to prepare")
        if self.skipped:
            print(f"llmpy: skipped {self.skipped:,} of {self.read:,} records without a string {self.field!r} field "
                  f"(first: {self.first()})", file=sys.stderr)


def check_encoding(name: str) -> str:
    """`name` when Python decodes text with it (utf-8, latin-1, cp1252, ...); else a one-line error for --encoding."""
    try:
        codecs.getincrementaldecoder(name)
        "".encode(name)  # a bytes-to-bytes codec (base64, zlib) is no text encoding
    except LookupError:
        raise LlmpyError(f"--encoding {name!r}: not a text encoding Python knows (e.g. utf-8, latin-1, cp1252, "
                         "utf-16)") from None
    return name


def is_utf8(encoding: str) -> bool:
    """Whether `encoding` names UTF-8 (utf-8, UTF8, utf_8, ...)."""
    return codecs.lookup(encoding).name == "utf-8"


def _nul_is_a_byte(encoding: str) -> bool:
    """Whether a NUL character is one 0x00 byte (UTF-8, Latin-1, cp1252, ...: where a NUL byte means binary data);
    in UTF-16/32 zero bytes are part of ordinary characters."""
    return len("\0\0".encode(encoding)) - len("\0".encode(encoding)) == 1


def _decoded_blocks(path: Path, encoding: str, limit: int | None = None) -> Iterator[str]:
    """The text of `path` (of a .gz: decompressed) in blocks, decoded strictly; stops after `limit` bytes when given.
    A byte that does not decode, or a NUL byte, is a one-line error naming the file and its byte offset."""
    # UTF-8 through utf-8-sig: a byte-order mark that opens a file (Windows editors write one) is not text
    decoder = codecs.getincrementaldecoder("utf-8-sig" if is_utf8(encoding) else encoding)("strict")
    nul_means_binary = _nul_is_a_byte(encoding)
    gz = path.name.lower().endswith(".gz")
    where = " of the decompressed data" if gz else ""
    position = 0  # bytes of the file handed to the decoder so far
    with (gzip.open if gz else open)(path, "rb") as handle:
        while True:
            block = handle.read(READ_BYTES)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                text, bad = decoder.decode(block, final=not block), None
            except UnicodeDecodeError as exc:
                text, bad = "", (position - pending + exc.start, exc.object[exc.start])
            nul = block.find(b"\0") if nul_means_binary else -1
            if nul >= 0 and (bad is None or position + nul < bad[0]):
                raise LlmpyError(f"{path}: a NUL byte at byte offset {position + nul}{where} (binary data, not "
                                 "text); prepare takes text files (UTF-16 text: give --encoding utf-16)")
            if bad is not None:
                raise LlmpyError(f"{path}: not valid {encoding} text: byte offset {bad[0]}{where} (0x{bad[1]:02x}) "
                                 "does not decode; if the file is text in another encoding, give it with --encoding "
                                 "(e.g. --encoding latin-1)")
            position += len(block)
            if text:
                yield text
            if not block or (limit is not None and position >= limit):
                return


def _lines(blocks: Iterable[str]) -> Iterator[str]:
    """The lines of text arriving in blocks (a line may span blocks), without their newlines."""
    partial: list[str] = []
    for block in blocks:
        *complete, rest = block.split("\n")
        if complete:
            yield "".join(partial) + complete[0]
            yield from complete[1:]
            partial = []
        partial.append(rest)
    if any(partial):
        yield "".join(partial)


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A file that cannot be read (no permission, a truncated or corrupt .gz) as a one-line error."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:
        raise LlmpyError(f"{path}: cannot read ({exc})") from None


def read_text_file(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole text of a file, decoded strictly (see `_decoded_blocks`)."""
    path = Path(path)
    with _readable(path):
        return "".join(_decoded_blocks(path, encoding))


def iter_json_records(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of a .jsonl / .jsonl.gz file; errors name file:line, or
    the file and the byte offset of text that does not decode."""
    with _readable(path):
        for line_number, line in enumerate(_lines(_decoded_blocks(path, encoding)), 1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise LlmpyError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None


def check_input(path: Path, encoding: str = "utf-8", whole: bool = False) -> None:
    """Before any output is touched: a one-line error for an input of a type prepare cannot read, one that cannot be
    opened, or (text and jsonl) one whose first SNIFF_BYTES (`whole`: all its bytes) do not decode or hold a NUL
    byte. The rest is checked as it is read."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return  # a binary format by design; its reader checks it
    if not name.endswith(JSONL_SUFFIXES + TEXT_SUFFIXES):
        raise LlmpyError(f"{path}: unsupported input type (use .txt, .jsonl, .jsonl.gz or .parquet)")
    with _readable(path):
        for _ in _decoded_blocks(path, encoding, limit=None if whole else SNIFF_BYTES):
            pass


def _jsonl_documents(path: Path, field: str, tally: RecordTally, encoding: str) -> Iterator[str]:
    for line_number, record in iter_json_records(path, encoding):
        tally.read += 1
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            tally.skip(lambda n=line_number, r=record: f"{path} line {n}, " + (
                f"keys: {', '.join(r)[:80]}" if isinstance(r, dict) else "not an object"))
            continue
        yield record[field]


def _parquet_documents(path: Path, field: str, tally: RecordTally) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LlmpyError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        parquet = pq.ParquetFile(path)
        if field not in parquet.schema_arrow.names:
            raise LlmpyError(f"{path}: no column {field!r} (columns: {', '.join(parquet.schema_arrow.names)})")
        row = 0
        for batch in parquet.iter_batches(columns=[field]):
            for text in batch.column(0).to_pylist():
                row, tally.read = row + 1, tally.read + 1
                if isinstance(text, str):
                    yield text
                else:
                    tally.skip(f"{path} row {row}")
    except LlmpyError:
        raise
    except Exception as exc:
        raise LlmpyError(f"{path}: cannot read parquet ({exc})") from None


DIRECTORY_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")  # what a directory given as an input contributes


def input_files(paths: Iterable[str | Path], flag: str = "--input") -> list[Path]:
    """The files `paths` name, a directory standing for its own .txt/.jsonl/.jsonl.gz/.parquet files in name order
    (said on stderr, with their number); a one-line error for a path that is not there or a directory without any."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(DIRECTORY_SUFFIXES))
            if not found:
                raise LlmpyError(f"{flag} {path}: a directory without {', '.join(DIRECTORY_SUFFIXES)} files in it; "
                                 "name the files to prepare")
            print(f"llmpy: {flag} {path}: a directory; taking its {len(found)} "
                  f"{', '.join(DIRECTORY_SUFFIXES)} file(s) in name order", file=sys.stderr)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LlmpyError(f"{flag} {path}: no such input file or directory")
    return files


def iter_documents(paths: Iterable[str | Path], field: str = "text", tally: RecordTally | None = None,
                   encoding: str = "utf-8") -> Iterator[str]:
    """Documents from .txt (one per file), .jsonl/.jsonl.gz (one per line) and .parquet (one per row); records
    without a string `field` are skipped and counted in `tally`. Text files are decoded strictly in `encoding`."""
    tally = tally if tally is not None else RecordTally(field)
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise LlmpyError(f"{path}: no such input file")
        name = path.name.lower()
        if name.endswith(JSONL_SUFFIXES):
            yield from _jsonl_documents(path, field, tally, encoding)
        elif name.endswith(".parquet"):
            yield from _parquet_documents(path, field, tally)
        elif name.endswith(TEXT_SUFFIXES):
            yield read_text_file(path, encoding)
        else:
            raise LlmpyError(f"{path}: unsupported input type (use .txt, .jsonl, .jsonl.gz or .parquet)")
