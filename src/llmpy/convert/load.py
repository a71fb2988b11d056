"""Load a GPT from whatever a user points at: an llmpy run directory or checkpoint, an llm.c model `.bin`, a Hugging
Face GPT-2 directory, or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmpy.convert.hf import load_hf_model
from llmpy.convert.llmc import MODEL_MAGIC, read_llmc_model
from llmpy.errors import LlmpyError
from llmpy.gpt2 import HUB_NAMES
from llmpy.model import GPT


def describe_source(spec: str) -> str:
    """What kind of model `spec` names: llmpy, llmc, hf or hub (raises if it names nothing loadable)."""
    path = Path(spec)
    if path.is_dir():
        if (path / "config.json").is_file() and any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
            return "hf"
        return "llmpy"
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(4)
        if len(head) == 4 and int(np.frombuffer(head, dtype="<i4")[0]) == MODEL_MAGIC:
            return "llmc"
        return "llmpy"
    if spec in HUB_NAMES or spec.startswith("openai-community/"):
        return "hub"
    raise LlmpyError(
        f"--model {spec}: no such file or directory, and not a hub name ({', '.join(HUB_NAMES)})"
    )


def load_any_model(spec: str) -> GPT:
    """A GPT on the CPU, in fp32, from any supported source."""
    kind = describe_source(spec)
    if kind == "llmpy":
        from llmpy.checkpoint import load_model

        return load_model(spec)[0]
    if kind == "llmc":
        return read_llmc_model(spec)
    return load_hf_model(spec)
