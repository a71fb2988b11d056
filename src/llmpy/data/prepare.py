"""Data sets -> llm.c token shards: tiny Shakespeare, local text files, and FineWeb-scale streams.

Layout (llm.c's): `{name}_val_000000.bin` is shard 0 (val), then `{name}_train_000001.bin`, ... of `shard_size`
tokens each; every document starts with <|endoftext|> (50256), GPT-2's pretraining layout. Every output goes through
`ShardedOutput`, so each has the same `manifest.json` (settings with the source text, each shard's token count and
SHA-256) that `llmpy prepare --verify DIR` checks and `llmpy.data.manifest.describe_source` puts in words.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llmpy.data.pipeline import ShardedOutput, StreamPosition, locked_out_dir, tokenize_batches, write_stream
from llmpy.data.shakespeare import resolve_tinyshakespeare, shakespeare_sections
from llmpy.data.sources import DatasetSpec, check_local_inputs, open_split
from llmpy.data.textfiles import RecordTally, check_input, input_files, is_utf8, iter_documents, read_text_file
from llmpy.errors import LlmpyError
from llmpy.atomic import sha256_of
from llmpy.tokenizer import GPT2Tokenizer, get_tokenizer

TINYSHAKESPEARE_VAL_TOKENS = 32_768  # llm.c's split for this set
DEFAULT_SHARD_SIZE = 100_000_000
ENCODE_BATCH = 256  # documents per tokenizer call
FORMAT = "llm.c token shard v1 (uint16), EOT before each document"
VAL_SHARE = 0.05  # of a text too short in documents to split by them: the share of its tokens for val (1 in 20)
MIN_SPLIT_TOKENS = 2  # each split needs at least one (input, next token) pair


def default_workers() -> int:
    """All cores but one (one is left for the main process that writes shards)."""
    return max(1, (os.cpu_count() or 2) - 1)


def _encoding_record(encoding: str) -> dict:
    """The source record's note of a --encoding other than UTF-8 (none for UTF-8: records written before the flag
    existed still match, so their preparations still resume)."""
    return {} if is_utf8(encoding) else {"encoding": encoding}


def _settings(source: dict, tokenizer: GPT2Tokenizer, shard_size: int, **extra) -> dict:
    return {"source": source, "tokenizer_sha256": sha256_of(tokenizer.bpe_file), "shard_size": shard_size,
            "format": FORMAT, **extra}


def _in_batches(documents: Iterable[str], size: int = ENCODE_BATCH) -> Iterator[list[str]]:
    batch: list[str] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _documents(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
    """Split tokenized batches back into one EOT-prefixed array per document."""
    for tokens, lengths in batches:
        yield from np.split(tokens, np.cumsum(lengths)[:-1])


def prepare_tinyshakespeare(out_dir: str | Path, input_path: str | Path | None = None,
                            tokenizer: GPT2Tokenizer | None = None, *, text: tuple[Path, bool] | None = None,
                            encoding: str = "utf-8") -> dict:
    """llm.c's recipe: each blank-line section after an EOT; val = exactly the first 32,768 tokens, train the rest.
    `text`: (file, is_substitute) already resolved by the caller; else `input_path`, the cache, the network. The
    data set in `out_dir` is replaced only once the new one is complete."""
    text_path, is_substitute = text or resolve_tinyshakespeare(input_path)
    tokenizer = tokenizer or get_tokenizer()
    texts = shakespeare_sections(read_text_file(text_path, encoding))
    tokens, _ = next(tokenize_batches([texts], tokenizer.bpe_file, workers=1))
    if tokens.size <= 2 * TINYSHAKESPEARE_VAL_TOKENS:
        raise LlmpyError(f"{text_path}: only {tokens.size} tokens, too short for the 32,768-token val split")
    source = {"name": "tinyshakespeare", "path": str(text_path), "sha256": sha256_of(text_path),
              "substitute": is_substitute, "documents": len(texts), **_encoding_record(encoding)}
    with ShardedOutput.beside(Path(out_dir), "tinyshakespeare", DEFAULT_SHARD_SIZE,
                              _settings(source, tokenizer, DEFAULT_SHARD_SIZE)) as output:
        # llm.c cuts at a token count, not a section boundary: same split, same val loss as its runs
        output.write("val", 0, tokens[:TINYSHAKESPEARE_VAL_TOKENS])
        output.write("train", 1, tokens[TINYSHAKESPEARE_VAL_TOKENS:])
        return output.finish()


SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_shard_name(name: str) -> None:
    """A one-line error for a --name that is not a plain file-name prefix: shards are written beside the manifest,
    which lists bare names, so a separator or '..' would put them where `prepare --verify` never looks."""
    if not SHARD_NAME.fullmatch(name) or ".." in name:
        raise LlmpyError(f"--name {name!r}: the shard prefix takes letters, digits, '.', '_' and '-' only (no path "
                         "separators, no '..', not starting with '.' or '-'); choose the directory with --out")


def _split_by_tokens(documents: list[np.ndarray], val_tokens: int | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(val, train) of a text too short in documents for the document rule: val = its first tokens, train the rest."""
    stream = np.concatenate(documents) if documents else np.zeros(0, dtype=np.uint16)
    wanted = val_tokens if val_tokens is not None else max(MIN_SPLIT_TOKENS, math.ceil(VAL_SHARE * stream.size))
    if stream.size - wanted < MIN_SPLIT_TOKENS:
        asked = (f"--val-tokens {val_tokens:,}" if val_tokens is not None
                 else f"val takes {VAL_SHARE:.0%} of them, and each split needs {MIN_SPLIT_TOKENS}")
        raise LlmpyError(f"{where}: only {stream.size:,} tokens in {len(documents)} document(s), too few to split into "
                         f"val and train ({asked}); give a longer text, a smaller --val-tokens, or separate val files "
                         "(--val-input)")
    share = "" if val_tokens is not None else f" ({VAL_SHARE:.0%})"
    print(f"llmpy: {where}: {len(documents)} document(s) are too few to split by document, so split by tokens: "
          f"val = the first {wanted:,} tokens{share}, train = the other {stream.size - wanted:,}", file=sys.stderr)
    return stream[:wanted], stream[wanted:]


def prepare_text(
    inputs: list[str | Path], out_dir: str | Path, *, name: str = "text", shard_size: int = DEFAULT_SHARD_SIZE,
    val_inputs: list[str | Path] | None = None, val_tokens: int | None = None, field: str = "text",
    tokenizer: GPT2Tokenizer | None = None, quiet: bool = False, encoding: str = "utf-8",
) -> dict:
    """Tokenize local files into shards. Val is, in order of precedence: all documents of `val_inputs`; the leading
    documents until `val_tokens` tokens are reached; else every 20th document, from the first (5%, one pass).
    Documents are never split between val and train, except when that would leave train empty (one book.txt is one
    document): then val is the first `val_tokens` tokens (default 5%) and train the rest. Records without a string
    `field` are skipped and counted. The val split is held in memory until the end. The inputs are checked before
    `out_dir` is touched, and its data set is replaced only once the new one is complete."""
    if val_tokens is not None and val_tokens <= 0:
        raise LlmpyError(f"--val-tokens must be a positive number of tokens, got {val_tokens}")
    check_shard_name(name)
    inputs, val_inputs = input_files(inputs), input_files(val_inputs or [], flag="--val-input")
    for path in inputs + val_inputs:
        check_input(path, encoding)
    tokenizer = tokenizer or get_tokenizer()
    val_rule = ("val_inputs" if val_inputs else f"first documents up to {val_tokens} tokens"
                if val_tokens is not None else "every 20th document")
    source = {"name": name, "inputs": [str(p) for p in inputs], "val_inputs": [str(p) for p in val_inputs],
              "field": field, "val_rule": val_rule, "sha256": [sha256_of(p) for p in inputs],
              "val_sha256": [sha256_of(p) for p in val_inputs], **_encoding_record(encoding)}
    with ShardedOutput.beside(Path(out_dir), name, shard_size, _settings(source, tokenizer, shard_size)) as output:
        _write_text_splits(output, inputs, val_inputs, val_tokens, field, encoding, tokenizer.bpe_file, quiet)
        return output.finish()


def _write_text_splits(output: ShardedOutput, inputs: list[Path], val_inputs: list[Path], val_tokens: int | None,
                       field: str, encoding: str, bpe_file: Path, quiet: bool) -> None:
    """`prepare_text`'s shards: train as the documents come, val (held in memory) at the end."""
    where = ", ".join(map(str, inputs))
    val: list[np.ndarray] = []
    tally, val_tally = RecordTally(field), RecordTally(field)

    def tokenized(paths, counts):
        documents = iter_documents(paths, field, counts, encoding)
        return _documents(tokenize_batches(_in_batches(documents), bpe_file, 1))

    def train_documents() -> Iterator[np.ndarray]:
        val_count = 0
        for index, tokens in enumerate(tokenized(inputs, tally)):
            to_val = (not val_inputs) and (val_count < val_tokens if val_tokens is not None else index % 20 == 0)
            if to_val:
                val.append(tokens)
                val_count += tokens.size
            else:
                yield tokens

    if val_inputs:
        val.extend(tokenized(val_inputs, val_tally))
        val_tally.report(", ".join(map(str, val_inputs)))
    with tqdm(unit="tok", unit_scale=True, desc=f"tokenizing {output.name}",
              disable=quiet or not sys.stderr.isatty()) as bar:
        batches = ((tokens, np.array([tokens.size])) for tokens in train_documents())
        write_stream(output, batches, start=output.position, val_from_stream=False, progress=bar)
    tally.report(where)
    if not val:
        raise LlmpyError(f"{', '.join(map(str, val_inputs or inputs))}: no documents for the val split")
    if output.next_index == 1:  # nothing went to train
        if val_inputs:
            raise LlmpyError(f"{where}: no documents for the train split")
        val_split, train_split = _split_by_tokens(val, val_tokens, where)
        output.settings["source"]["val_rule"] = (f"first {val_split.size} tokens "
                                                 "(too few documents to split by document)")
        write_stream(output, [(train_split, np.array([train_split.size]))], start=StreamPosition(),
                     val_from_stream=False)
        val = [val_split]
    output.write("val", 0, np.concatenate(val))


def prepare_stream(
    spec: DatasetSpec, out_dir: str | Path, *, inputs: list[str] | None = None, val_inputs: list[str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None, max_tokens: int | None = None,
    field: str = "text", quiet: bool = False, tokenizer: GPT2Tokenizer | None = None, encoding: str = "utf-8",
) -> dict:
    """Tokenize a hub corpus (or local files of the same schema) into llm.c shards; resumes an interrupted run. The
    local inputs are checked before `out_dir` is touched; a directory prepared with other settings is refused, never
    replaced (a FineWeb-scale data set is not written twice to replace one)."""
    if _encoding_record(encoding) and not inputs:
        raise LlmpyError(f"--encoding {encoding}: for local --input files; the hub's data sets are UTF-8")
    check_local_inputs([*(inputs or []), *(val_inputs or [])], encoding)
    tokenizer = tokenizer or get_tokenizer()
    workers = workers or default_workers()
    source = {"dataset": spec.hub_path, "config": spec.hub_config, "field": field,
              "inputs": [str(f) for f in inputs or []], "val_inputs": [str(f) for f in val_inputs or []],
              **_encoding_record(encoding)}
    with locked_out_dir(Path(out_dir)):  # one prepare at a time in a directory
        output = ShardedOutput.open(Path(out_dir), spec.name, shard_size,
                                    _settings(source, tokenizer, shard_size, max_tokens=max_tokens))
        if output.complete:
            print(f"{out_dir}: already complete ({len(output.shards)} shards); nothing to do", file=sys.stderr)
            return output.save()
        separate_val = bool(val_inputs) or (spec.val_split is not None and not inputs)
        if separate_val and not output.has_val():
            val_tally = RecordTally(field)
            val_docs = open_split(spec, spec.val_split or "train", val_inputs, field, tally=val_tally,
                                  encoding=encoding)
            val_batches = list(tokenize_batches(val_docs, tokenizer.bpe_file, workers))
            val_tally.report(", ".join(val_inputs or []) or f"{spec.hub_path} ({spec.val_split})")
            val_stream = np.concatenate([tokens for tokens, _ in val_batches] or [np.zeros(0, dtype=np.uint16)])
            if not val_stream.size:
                raise LlmpyError(f"{', '.join(val_inputs or []) or spec.hub_path}: no documents for the val split")
            output.write("val", 0, val_stream)
        resumed = output.position.next_document > 0
        tally = RecordTally(field)
        train_docs = open_split(spec, spec.train_split, inputs, field, skip=output.position.next_document, tally=tally,
                                encoding=encoding)
        written = sum(s["tokens"] for s in output.shards)
        total = max_tokens or (None if inputs else spec.expected_tokens)
        with tqdm(total=total, initial=written, unit="tok", unit_scale=True, desc=f"{spec.name} ({workers} workers)",
                  disable=quiet, dynamic_ncols=True) as bar:
            if resumed:
                bar.write(f"resuming after {len(output.shards)} complete shards at document "
                          f"{output.position.next_document}")
            # closing: a Ctrl-C (or any error) while a shard is written stops the tokenizer pool here and now, not
            # whenever the suspended generator is collected, which can be during interpreter shutdown
            with contextlib.closing(tokenize_batches(train_docs, tokenizer.bpe_file, workers)) as batches:
                write_stream(output, batches, start=output.position, val_from_stream=not separate_val,
                             max_tokens=max_tokens, progress=bar)
        where = ", ".join(inputs or []) or spec.hub_path
        tally.report(where)
        _check_train_left(output, where, separate_val)
        return output.finish()


def _check_train_left(output: ShardedOutput, where: str, separate_val: bool) -> None:
    """A one-line error when the stream left no train tokens (a marked-complete output would train on nothing)."""
    if any(s["split"] == "train" and s["tokens"] for s in output.shards):
        return
    if separate_val:
        raise LlmpyError(f"{where}: no documents for the train split")
    val = sum(s["tokens"] for s in output.shards if s["split"] == "val")
    raise LlmpyError(
        f"{where}: all {val:,} tokens went to the val shard (shard 0 takes the first --shard-size "
        f"{output.shard_size:,} tokens, as llm.c does), none are left for train; give a smaller --shard-size, "
        "more data, or separate val files (--val-input)"
    )
