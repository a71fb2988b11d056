"""Document sources read through Hugging Face `datasets` in streaming mode: FineWeb, FineWeb-Edu, TinyStories,
or local parquet / jsonl(.gz) files in the same schema (the same code path, which is how tests and offline users
run it)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmpy.data.textfiles import RecordTally, check_input, is_utf8
from llmpy.errors import LlmpyError


@dataclass(frozen=True)
class DatasetSpec:
    """A corpus on the Hugging Face hub and how llm.c names its shards."""

    name: str  # shard prefix, e.g. fineweb -> fineweb_train_000001.bin
    hub_path: str
    hub_config: str | None
    train_split: str = "train"
    val_split: str | None = None  # a separate val split; None = shard 0 of the stream is val (llm.c)
    expected_tokens: int | None = None  # for the progress bar's ETA
    default_out: str = ""


def fineweb_spec(kind: str = "classic", version: str = "10B") -> DatasetSpec:
    """FineWeb (classic) or FineWeb-Edu, sample-10BT or sample-100BT, named like llm.c's fineweb.py."""
    if kind not in ("classic", "edu"):
        raise LlmpyError(f"--type must be classic or edu, got {kind!r}")
    if version not in ("10B", "100B"):
        raise LlmpyError(f"--version must be 10B or 100B, got {version!r}")
    name = "fineweb" if kind == "classic" else "edu_fineweb"
    hub = "HuggingFaceFW/fineweb" if kind == "classic" else "HuggingFaceFW/fineweb-edu"
    return DatasetSpec(name=name, hub_path=hub, hub_config=f"sample-{version}T",
                       expected_tokens=int(version[:-1]) * 10**9, default_out=f"data/{name}{version}")


TINYSTORIES = DatasetSpec(name="tinystories", hub_path="roneneldan/TinyStories", hub_config=None,
                          val_split="validation", expected_tokens=None, default_out="data/tinystories")


def _local_builder(files: list[str]) -> str:
    kinds = {"parquet" if f.endswith(".parquet") else "json" if f.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))
             else None for f in files}
    if None in kinds:
        bad = next(f for f in files if not f.endswith((".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz")))
        raise LlmpyError(f"{bad}: --input takes .parquet or .jsonl(.gz) files")
    if len(kinds) > 1:
        raise LlmpyError("--input: give either parquet or jsonl files, not both")
    return kinds.pop()


def _existing_files(inputs: list[str]) -> list[Path]:
    """The local --input files, each checked to be a file (a one-line error for a directory or a missing one)."""
    for f in inputs:
        if Path(f).is_dir():
            raise LlmpyError(f"{f}: a directory; --input takes the .parquet or .jsonl(.gz) files themselves "
                             f"(e.g. --input {Path(f) / '*.parquet'})")
        if not Path(f).is_file():
            raise LlmpyError(f"{f}: no such input file")
    return [Path(f) for f in inputs]


def check_local_inputs(inputs: list[str], encoding: str = "utf-8") -> None:
    """Before any output is touched: the files exist, are all parquet or all jsonl, and (jsonl) their first bytes
    decode in `encoding` (see `textfiles.check_input`)."""
    files = _existing_files(inputs)
    if inputs:
        _local_builder(inputs)
    for path in files:
        check_input(path, encoding)


def open_split(spec: DatasetSpec, split: str, inputs: list[str] | None = None, field: str = "text",
               skip: int = 0, batch_size: int = 256, tally: RecordTally | None = None,
               encoding: str = "utf-8") -> Iterator[list[str | None]]:
    """Stream the `field` of a hub split's rows, or of local files' (jsonl decoded in `encoding`), in lists of
    `batch_size`, after `skip` rows. A row without a string `field` is None (no tokens, but it keeps its place for a
    resume) and counted in `tally`."""
    try:
        import datasets
    except ImportError:
        raise LlmpyError("preparing hub or parquet/jsonl data needs the `datasets` package (pip install datasets)") from None
    datasets.logging.set_verbosity_error()
    # Streaming needs no torch, but `datasets` imports it (1-2 s) to share an epoch counter with torch DataLoader
    # workers when it is installed; a Ctrl-C during that import aborts inside torch's C++ instead of stopping cleanly.
    datasets.config.TORCH_AVAILABLE = False
    if inputs:
        files = [str(f) for f in _existing_files(inputs)]
        where = ", ".join(files)
        load = dict(path=_local_builder(files), data_files=files, split="train")
        if load["path"] == "json" and not is_utf8(encoding):
            load["encoding"] = encoding
    else:
        where = f"{spec.hub_path} ({spec.hub_config or 'default'}, {split})"
        load = dict(path=spec.hub_path, name=spec.hub_config, split=split)
    try:
        dataset = datasets.load_dataset(**load, streaming=True)
        if field not in (dataset.column_names or [field]):
            raise LlmpyError(f"{where}: no column {field!r} (columns: {dataset.column_names})")
        dataset = dataset.select_columns([field])
        if skip:
            dataset = dataset.skip(skip)
    except LlmpyError:
        raise
    except Exception as exc:  # offline, a bad file, a missing config: say where and what
        raise LlmpyError(f"{where}: cannot open with datasets ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                         + ("" if inputs else "; offline? download the files and pass them with --input")) from None
    local = [Path(f) for f in inputs or []]
    return _text_batches(dataset, field, where, batch_size, skip, tally or RecordTally(field),
                         lambda row: locate_row(local, row, encoding) if local else f"row {row + 1} of {where}",
                         lambda: [check_input(path, encoding, whole=True) for path in local])


def locate_row(files: list[Path], row: int, encoding: str = "utf-8") -> str:
    """Where row `row` (0-based, as `datasets` counts: jsonl blank lines are not rows) is: FILE line N or FILE row N."""
    for path in files:
        if path.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(path).metadata.num_rows
            if row < rows:
                return f"{path} row {row + 1}"
            row -= rows
            continue
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding=encoding, errors="replace") as handle:  # finds a line; decoding is checked
            for line_number, line in enumerate(handle, 1):
                if line.strip():
                    if row == 0:
                        return f"{path} line {line_number}"
                    row -= 1
    return "?"


def _text_batches(dataset, field: str, where: str, batch_size: int, first_row: int, tally: RecordTally,
                  locate, find_undecodable) -> Iterator[list[str | None]]:
    """`field` of each row; a failure mid-stream is one line, a byte that does not decode named by its offset
    (`find_undecodable` reads the local files again to find it: only after such a failure)."""
    row = first_row
    try:
        for batch in dataset.iter(batch_size=batch_size):  # columnar batches: far less per-row Python than rows
            texts = [text if isinstance(text, str) else None for text in batch[field]]
            if None in texts:
                for offset in (i for i, text in enumerate(texts) if text is None):
                    tally.skip(lambda at=row + offset: locate(at))
            row += len(texts)
            tally.read += len(texts)
            yield texts
    except Exception as exc:  # a corrupt line or file met mid-stream
        if isinstance(exc, UnicodeError):
            find_undecodable()
        raise LlmpyError(f"{where}: reading failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
