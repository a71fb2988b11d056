"""Where `llmpy convert --out` may write: a new path, an empty directory, or an earlier output of the same kind (which
it replaces). Anything else, a file where a directory goes or a directory holding other files, is refused in one line
before the model is loaded: a user's unrelated files are never overwritten."""

from __future__ import annotations

import re
from pathlib import Path

from llmpy.errors import LlmpyError

_TEMP_FILE = re.compile(r"^\..+\.tmp\d+$")  # a write killed before its rename (llmpy.atomic's temp names)


def _existing_ancestor_is_a_directory(out: Path) -> None:
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LlmpyError(f"--out {out}: {parent} is a file, not a directory; choose another --out")
            return


def _has_magic(path: Path, magic: int) -> bool:
    """Whether `path` starts with llm.c's little-endian int32 `magic`."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return len(head) == 4 and int.from_bytes(head, "little", signed=True) == magic


def _directory_output(out: Path, to: str, ours: set[str]) -> bool:
    """hf and llmpy write a directory: True when `out` holds an earlier output of this kind to replace."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise LlmpyError(f"--out {out}: is a file, and --to {to} writes a directory; choose a new directory "
                         f"(or remove {out})")
    entries = sorted(entry.name for entry in out.iterdir() if not _TEMP_FILE.match(entry.name))
    others = [name for name in entries if name not in ours]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise LlmpyError(f"--out {out}: the directory holds files that --to {to} does not write ({shown}); choose a "
                         f"new or empty directory")
    return bool(entries)


def _llmc_output(out: Path) -> bool:
    """llmc writes a model .bin and gpt2_tokenizer.bin beside it: True when they replace earlier llm.c files."""
    from llmpy.convert.llmc import MODEL_MAGIC, TOKENIZER_FILE_NAME, TOKENIZER_MAGIC

    if out.is_dir():
        raise LlmpyError(f"--out {out}: is a directory, and --to llmc writes one model file; give its name, e.g. "
                         f"{out / 'model.bin'}")
    if out.exists() and not (out.is_file() and _has_magic(out, MODEL_MAGIC)):
        raise LlmpyError(f"--out {out}: exists and is not an llm.c model file; choose a new file name (or remove it)")
    tokenizer = out.parent / TOKENIZER_FILE_NAME
    if tokenizer.exists() and not (tokenizer.is_file() and _has_magic(tokenizer, TOKENIZER_MAGIC)):
        raise LlmpyError(f"--out {out}: {tokenizer}, written beside the model, exists and is not an llm.c tokenizer "
                         f"file; choose another directory (or remove it)")
    return out.exists()


def check_output(out: str | Path, to: str) -> bool:
    """Refuse an --out that `convert --to {to}` would overwrite other files in; True when it replaces an earlier
    output of the same kind."""
    out = Path(out)
    _existing_ancestor_is_a_directory(out)
    if to == "llmc":
        return _llmc_output(out)
    if to == "hf":  # before loading, the family is not known: either family's files are ours
        from llmpy.convert.hf import HF_FILES
        from llmpy.convert.hf_modern import HF_MODERN_FILES

        return _directory_output(out, to, {*HF_FILES, *HF_MODERN_FILES})
    from llmpy.checkpoint import done_path, model_path

    return _directory_output(out, to, {model_path(out, 0).name, done_path(out, 0).name})
