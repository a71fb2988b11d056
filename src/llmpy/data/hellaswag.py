"""HellaSwag's validation set (10,042 examples), found in llmpy.resources' order (the command's flag ->
$LLMPY_HELLASWAG -> ./data/hellaswag, where `llmpy prepare hellaswag` writes -> the cache -> the rowanz/hellaswag GitHub
data -> a clear error). The evaluation itself lives in llmpy.eval; this only finds and checks the file."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from pathlib import Path

from llmpy.atomic import atomic_open, atomic_write_bytes, sha256_of
from llmpy.data.pipeline import make_out_dir
from llmpy.data.textfiles import iter_json_records
from llmpy.errors import LlmpyError
from llmpy.resources import HELLASWAG_VAL, locate

HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_VAL_SHA256 = "dc1be2fa1bef56aab8e92a5be597a617e363b09239fa66822939d7fb7a8da4ec"
HELLASWAG_VAL_EXAMPLES = 10_042
FIELDS = ("ctx", "endings", "label")


def check_hellaswag_file(path: Path) -> int:
    """Number of examples in a HellaSwag jsonl, after checking every line has ctx, 4 endings and a label 0-3."""
    count = 0
    for line_number, example in iter_json_records(Path(path)):
        if not isinstance(example, dict) or not all(key in example for key in FIELDS) \
                or len(example["endings"]) != 4 or example["label"] not in (0, 1, 2, 3):
            raise LlmpyError(f"{path}:{line_number}: not a HellaSwag example (needs ctx, 4 endings, label 0-3)")
        count += 1
    if count == 0:
        raise LlmpyError(f"{path}: no examples")
    return count


def _download(target: Path) -> bool:
    """rowanz/hellaswag's val jsonl into `target`; False when offline or blocked."""
    try:
        with urllib.request.urlopen(HELLASWAG_VAL_URL, timeout=30) as response:
            data = response.read()
    except Exception:  # offline, blocked, or a timeout: the caller says what to do instead
        return False
    atomic_write_bytes(target, data)
    print(f"llmpy: downloaded {HELLASWAG_VAL_URL} -> {target}", file=sys.stderr)
    return True


def resolve_hellaswag(input_path: str | Path | None = None, flag: str = "--hellaswag-file") -> Path:
    """The val jsonl (see the module docstring for the order); `flag`: the command's option for `input_path`
    (`eval` and `train` take --hellaswag-file, `prepare hellaswag` --input), named in its messages."""
    return locate(HELLASWAG_VAL, input_path, flag, fetchers=(_download,), online=HELLASWAG_VAL_URL)


def prepare_hellaswag(out_dir: str | Path, input_path: str | Path | None = None) -> dict:
    """Copy the checked val jsonl into `out_dir` with a manifest (examples, SHA-256, whether it is the official file)."""
    source = resolve_hellaswag(input_path, flag="--input")
    examples = check_hellaswag_file(source)
    out = Path(out_dir)
    make_out_dir(out)
    target = out / "hellaswag_val.jsonl"
    if source.resolve() != target.resolve():
        with open(source, "rb") as reader, atomic_open(target) as writer:
            shutil.copyfileobj(reader, writer)
    digest = sha256_of(target)
    manifest = {"source": str(source), "examples": examples, "sha256": digest,
                "official": digest == HELLASWAG_VAL_SHA256 and examples == HELLASWAG_VAL_EXAMPLES}
    atomic_write_bytes(out / "hellaswag_manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest
