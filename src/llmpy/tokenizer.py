"""GPT-2 BPE through tiktoken, with the ranks file resolved locally first and downloaded only as a fallback.

Resolution order for `gpt2.tiktoken`: an explicit path -> $LLMPY_GPT2_BPE -> the llmpy cache -> tiktoken's own
`gpt2` download (OpenAI's encoder.json + vocab.bpe) -> the copy inside the `openai-whisper` sdist on PyPI, checked
by SHA-256 -> a clear error. $LLMPY_OFFLINE=1 skips both downloads.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from llmpy.config import default_cache_dir
from llmpy.errors import LlmpyError

GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"
# GPT-2's pre-tokenization regex (contractions, letters, numbers, other symbols, whitespace).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TOKEN = 50256


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _checked(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise LlmpyError(f"{path} ({origin}): no such GPT-2 BPE file")
    if sha256_of(path) != GPT2_TIKTOKEN_SHA256:
        raise LlmpyError(
            f"{path} ({origin}): SHA-256 differs from GPT-2's gpt2.tiktoken; the file is damaged or not GPT-2's "
            "ranks (delete it to fetch a fresh copy)"
        )
    return path


def _from_tiktoken_download(target: Path) -> bool:
    """tiktoken's own `gpt2` encoding (downloads OpenAI's files when online); its ranks saved in our format."""
    try:
        import base64

        import tiktoken

        encoding = tiktoken.get_encoding("gpt2")
        ranks = encoding._mergeable_ranks  # tiktoken keeps no public accessor for them
        lines = b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
                         for token, rank in sorted(ranks.items(), key=lambda item: item[1]))
    except Exception:  # offline, blocked, or an old tiktoken: fall through to the next source
        return False
    if hashlib.sha256(lines).hexdigest() != GPT2_TIKTOKEN_SHA256:
        return False
    _atomic_write(target, lines)
    print(f"llmpy: GPT-2 BPE downloaded by tiktoken, cached at {target}", file=sys.stderr)
    return True


def _from_whisper_sdist(target: Path) -> bool:
    """Fetch the openai-whisper sdist with pip (a package registry is often reachable when nothing else is)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                   "-d", tmp, WHISPER_SDIST]
        try:
            subprocess.run(command, check=True, timeout=300, capture_output=True)
            sdist = next(Path(tmp).glob("openai*whisper*.tar.gz"))
            with tarfile.open(sdist) as archive:
                member = next(m for m in archive.getmembers() if m.name.endswith(WHISPER_MEMBER))
                data = archive.extractfile(member).read()
        except Exception:
            return False
    if hashlib.sha256(data).hexdigest() != GPT2_TIKTOKEN_SHA256:
        return False
    _atomic_write(target, data)
    print(f"llmpy: GPT-2 BPE taken from the {WHISPER_SDIST} sdist on PyPI, cached at {target}", file=sys.stderr)
    return True


def resolve_bpe_file(path: str | Path | None = None) -> Path:
    """Find (or fetch into the cache) GPT-2's `gpt2.tiktoken` ranks file; see the module docstring for the order."""
    if path:
        return _checked(Path(path), "explicit path")
    if os.environ.get("LLMPY_GPT2_BPE"):
        return _checked(Path(os.environ["LLMPY_GPT2_BPE"]), "$LLMPY_GPT2_BPE")
    cached = default_cache_dir() / "gpt2.tiktoken"
    if cached.is_file():
        return _checked(cached, "llmpy cache")
    if os.environ.get("LLMPY_OFFLINE") != "1":
        if _from_tiktoken_download(cached) or _from_whisper_sdist(cached):
            return cached
    raise LlmpyError(
        "GPT-2 BPE (gpt2.tiktoken) not found: set LLMPY_GPT2_BPE=/path/to/gpt2.tiktoken, put the file at "
        f"{cached}, or run once with internet access (tiktoken's download or `pip download {WHISPER_SDIST}`)"
    )


class GPT2Tokenizer:
    """GPT-2's byte-level BPE: 50,256 merges' ranks plus <|endoftext|> = 50256."""

    eot_token = EOT_TOKEN
    n_vocab = 50257

    def __init__(self, bpe_file: Path):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        self.bpe_file = bpe_file
        self._encoding = tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(bpe_file)),
            special_tokens={"<|endoftext|>": EOT_TOKEN},
        )

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids; a literal '<|endoftext|>' in the text is encoded as plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(texts)

    def decode(self, ids) -> str:
        return self._encoding.decode(list(ids))


@functools.lru_cache(maxsize=4)
def _tokenizer_for(bpe_file: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer(bpe_file)


def get_tokenizer(path: str | Path | None = None) -> GPT2Tokenizer:
    """The GPT-2 tokenizer, built once per ranks file."""
    return _tokenizer_for(resolve_bpe_file(path).resolve())
