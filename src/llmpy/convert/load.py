"""Load a model from whatever a user points at: an llmpy run directory or checkpoint, an llm.c model `.bin`, a Hugging
Face GPT-2 directory or llmpy's own Hugging Face export of a modern-family model, or a hub name (gpt2, gpt2-medium,
gpt2-large, gpt2-xl)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmpy.config import DESCRIPTOR_FORMS, DESCRIPTOR_RE, GPT2_NAMES, HUB_FORMS, MODEL_FILE_FORMS
from llmpy.convert.hf import load_hf_model
from llmpy.convert.llmc import MODEL_MAGIC, read_llmc_model
from llmpy.errors import LlmpyError
from llmpy.gpt2 import HUB_NAMES
from llmpy.model import GPT
from llmpy.suggest import close_match


HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TORCH_SAVE_HEADS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, and its earlier format (a bare pickle)


def describe_source(spec: str, flag: str = "--model") -> str:
    """What kind of model `spec` names: llmpy, llmc, hf or hub (raises if it names nothing loadable)."""
    path = Path(spec)
    if path.is_dir():
        return _directory_kind(path, flag)
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(4)
        if len(head) == 4 and int(np.frombuffer(head, dtype="<i4")[0]) == MODEL_MAGIC:
            return "llmc"
        if head.startswith(_TORCH_SAVE_HEADS):
            return "llmpy"
        raise LlmpyError(f"{flag} {spec}: not an llmpy checkpoint, an llm.c model .bin or a Hugging Face directory: "
                         f"it is {what_file_is(path)}")
    if spec in HUB_NAMES or spec.startswith("openai-community/"):
        return "hub"
    raise unknown_model_error(spec, flag)


def _directory_kind(path: Path, flag: str) -> str:
    """hf for a Hugging Face model directory, else llmpy (a run directory); an HF directory without weights raises."""
    if not (path / "config.json").is_file():
        return "llmpy"
    if any((path / name).is_file() for name in HF_WEIGHTS) or any(path.glob("*.safetensors")):  # or sharded
        return "hf"
    holds_checkpoints = any(path.glob("DONE_*")) or any(path.glob("model_*.pt"))
    if not holds_checkpoints and not _is_run_config(path / "config.json"):
        raise LlmpyError(f"{flag} {path}: a Hugging Face model directory (it has config.json) without its weights: "
                         f"neither {' nor '.join(HF_WEIGHTS)} is in it")
    return "llmpy"


def _is_run_config(file: Path) -> bool:
    """Whether `file` is the config.json llmpy train writes into a run directory (not a Hugging Face one)."""
    try:
        return "train" in json.loads(file.read_text())
    except (OSError, ValueError, TypeError):
        return False


def what_file_is(path: Path) -> str:
    """A few words on a file that holds no model: empty, a safetensors file, JSON, text (its first line), binary."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head:
        return "an empty file"
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:  # safetensors: a JSON header's length first
        return "a safetensors file (give the Hugging Face directory that holds it and its config.json)"
    text = _text_or_none(head)
    if text is None:
        return f"binary data ({size} bytes, starting {head[:8].hex(' ')})"
    if text.lstrip()[:1] in ("{", "[") and size < (1 << 20):
        try:
            json.loads(path.read_text())
            return "a JSON file"
        except ValueError:
            pass
    first = text.splitlines()[0] if text.strip() else ""
    return f"a text file (first line: {first[:60]!r})"


def _text_or_none(head: bytes) -> str | None:
    """`head` (the first bytes of a file) as UTF-8 text, or None when it is binary data."""
    try:
        text = head.decode()
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of `head`
            return None
        text = head[:exc.start].decode()
    return None if any(ord(c) < 32 and c not in "\t\n\r" or c == "\x7f" for c in text) else text


def unknown_model_error(spec: str, flag: str = "--model", descriptors: bool = False) -> LlmpyError:
    """For a `spec` that names nothing: the forms `flag` takes and the near match. `descriptors`: train's -e, which
    also takes a shape (dN, dNwC, a hub name) for a fresh model."""
    if descriptors:
        forms = f"{DESCRIPTOR_FORMS}, the shape of {HUB_FORMS}, or a model to start from: {MODEL_FILE_FORMS}"
        known = [*GPT2_NAMES, *GPT2_NAMES.values()]
    else:
        forms = f"{MODEL_FILE_FORMS}, or {HUB_FORMS}"
        known = list(HUB_NAMES)
    match = close_match(spec, known)
    if not descriptors and DESCRIPTOR_RE.fullmatch(spec):
        note = f" ({spec} is a model shape for `llmpy train -e`, not weights)"
    else:
        note = f" (did you mean {match!r}?)" if match else ""
    return LlmpyError(f"{flag} {spec}: not a model {'descriptor, ' if descriptors else ''}file or directory{note}; "
                      f"it takes {forms}")


def load_any_model(spec: str, flag: str = "--model") -> GPT:
    """A model (GPT or ModernGPT) on the CPU, in fp32, from any supported source (`flag`: the flag that named it,
    for errors)."""
    kind = describe_source(spec, flag)
    if kind == "llmpy":
        from llmpy.checkpoint import load_model

        return load_model(spec)[0]
    if kind == "llmc":
        return read_llmc_model(spec)
    return load_hf_model(spec)
