"""Documents from local files: .txt (one per file), .jsonl / .jsonl.gz (one per line), .parquet (one per row)."""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmpy.errors import LlmpyError


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


def iter_json_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of a .jsonl / .jsonl.gz file; errors name file:line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LlmpyError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # e.g. a truncated .gz
        raise LlmpyError(f"{path}: cannot read ({exc})") from None


def _jsonl_documents(path: Path, field: str, tally: RecordTally) -> Iterator[str]:
    for line_number, record in iter_json_records(path):
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


def iter_documents(paths: Iterable[str | Path], field: str = "text", tally: RecordTally | None = None) -> Iterator[str]:
    """Documents from .txt (one per file), .jsonl/.jsonl.gz (one per line) and .parquet (one per row); records
    without a string `field` are skipped and counted in `tally`."""
    tally = tally if tally is not None else RecordTally(field)
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise LlmpyError(f"{path}: no such input file")
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
            yield from _jsonl_documents(path, field, tally)
        elif name.endswith(".parquet"):
            yield from _parquet_documents(path, field, tally)
        elif name.endswith((".txt", ".md")):
            yield path.read_text(encoding="utf-8", errors="replace")
        else:
            raise LlmpyError(f"{path}: unsupported input type (use .txt, .jsonl, .jsonl.gz or .parquet)")
