"""Documents from local files: .txt (one per file), .jsonl / .jsonl.gz (one per line), .parquet (one per row)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from llmpy.errors import LlmpyError


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


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    for line_number, record in iter_json_records(path):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise LlmpyError(f"{path}:{line_number}: no string field {field!r}")
        yield record[field]


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LlmpyError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        parquet = pq.ParquetFile(path)
        if field not in parquet.schema_arrow.names:
            raise LlmpyError(f"{path}: no column {field!r} (columns: {', '.join(parquet.schema_arrow.names)})")
        for batch in parquet.iter_batches(columns=[field]):
            yield from (text for text in batch.column(0).to_pylist() if text is not None)
    except LlmpyError:
        raise
    except Exception as exc:
        raise LlmpyError(f"{path}: cannot read parquet ({exc})") from None


def iter_documents(paths: Iterable[str | Path], field: str = "text") -> Iterator[str]:
    """Documents from .txt (one per file), .jsonl/.jsonl.gz (one per line) and .parquet (one per row)."""
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise LlmpyError(f"{path}: no such input file")
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
            yield from _jsonl_documents(path, field)
        elif name.endswith(".parquet"):
            yield from _parquet_documents(path, field)
        elif name.endswith((".txt", ".md")):
            yield path.read_text(encoding="utf-8", errors="replace")
        else:
            raise LlmpyError(f"{path}: unsupported input type (use .txt, .jsonl, .jsonl.gz or .parquet)")
