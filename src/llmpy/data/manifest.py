"""`manifest.json` beside prepared shards: read it back with its shape checked, and say in words which text the
shards hold (their `settings.source`), so that every run can name what it trains on."""

from __future__ import annotations

import json
from pathlib import Path

from llmpy.data.shakespeare import TINYSHAKESPEARE_SHA256
from llmpy.data.shards import expand_shard_pattern
from llmpy.errors import LlmpyError

MANIFEST = "manifest.json"
REBUILD = "use another --out, or delete the directory and prepare again"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shard_problem(number: int, shard: object) -> str | None:
    if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and isinstance(shard.get("sha256"), str)
            and shard.get("split") in ("train", "val") and _is_count(shard.get("index"))
            and _is_count(shard.get("tokens"))):
        return f"shard entry {number} is not {{file, split, index, tokens, sha256}}"
    if Path(shard["file"]).name != shard["file"] or shard["file"] in ("", ".", ".."):
        return f"shard entry {number} names {shard['file']!r}, not a file beside the manifest"
    return None


def _shape_problem(manifest: object) -> str | None:
    """What keeps `manifest` from being one that prepare wrote, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key, kind in (("settings", dict), ("complete", bool), ("position", dict), ("shards", list)):
        if not isinstance(manifest.get(key), kind):
            return f"{key!r} is missing or not a JSON {'object' if kind is dict else kind.__name__}"
    position = manifest["position"]
    if set(position) != {"next_document", "document_offset"} or not all(map(_is_count, position.values())):
        return "'position' is not {next_document, document_offset} of counts"
    return next(filter(None, (_shard_problem(n, shard) for n, shard in enumerate(manifest["shards"]))), None)


def read_manifest(path: str | Path, fix: str | None = REBUILD) -> dict:
    """A prepare manifest, checked for the shape prepare writes; else a one-line LlmpyError naming the file, the
    problem and (`fix`) what to do."""
    path = Path(path)
    advice = f"; {fix}" if fix else ""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise LlmpyError(f"{path}: not valid JSON ({exc.msg} at {where}){advice}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmpyError(f"{path}: cannot read ({exc}){advice}") from None
    problem = _shape_problem(manifest)
    if problem is not None:
        raise LlmpyError(f"{path}: not a manifest written by llmpy prepare ({problem}){advice}")
    return manifest


def refuse_unfinished(files: list[Path]) -> None:
    """A one-line error when a directory of `files` holds a manifest of a preparation that did not finish (killed,
    interrupted, failed): its shards are part of a data set, and its record names inputs never tokenized. Shards
    without a manifest (llm.c's own) are not prepare's to judge."""
    for directory in dict.fromkeys(f.parent for f in files):
        path = directory / MANIFEST
        try:
            complete = read_manifest(path)["complete"] if path.is_file() else True
        except LlmpyError:
            continue  # describe_source says what is wrong with it, in the run's header
        if not complete:
            raise LlmpyError(f"{path}: the preparation of these shards did not finish (it stopped or failed); re-run "
                             "the same prepare command to complete it, then train on them")


def _listing(paths: list[str], limit: int = 3) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def describe_text_source(source: object) -> str:
    """One phrase for a manifest's `settings.source`: tiny Shakespeare (real or SUBSTITUTE), local files, a hub set."""
    if not isinstance(source, dict):
        return "an unrecorded source (the manifest predates source records; prepare again to record it)"
    digest = f"sha256 {source['sha256'][:12]}" if isinstance(source.get("sha256"), str) else "no sha256 recorded"
    if source.get("name") == "tinyshakespeare":
        if source.get("substitute"):
            return (f"a SUBSTITUTE for tiny Shakespeare ({source.get('path')}, {digest}); losses will not match runs "
                    "on the real text")
        real = source.get("sha256") == TINYSHAKESPEARE_SHA256
        return f"tiny Shakespeare ({source.get('path')}, {digest}{'' if real else ', not the char-rnn input.txt'})"
    if source.get("dataset") and not source.get("inputs"):
        return f"{source['dataset']} ({source.get('config') or 'default'}) from the Hugging Face hub"
    inputs, val = source.get("inputs") or [], source.get("val_inputs") or []
    if inputs:
        return f"{_listing([str(p) for p in inputs])}" + (f" (val: {_listing([str(p) for p in val])})" if val else "")
    return f"an unrecognised source record {json.dumps(source)[:120]}"


def describe_source(shard_glob: str) -> str | None:
    """What text the shards matching `shard_glob` hold, from the manifest.json beside them; None without one."""
    try:
        files = expand_shard_pattern(shard_glob)
    except LlmpyError:
        return None  # the loader says so, with its own flag
    lines = []
    for directory in dict.fromkeys(f.parent for f in files):
        path = directory / MANIFEST
        if not path.is_file():
            continue
        try:
            manifest = read_manifest(path)
        except LlmpyError as exc:
            lines.append(str(exc))
            continue
        listed = {shard["file"] for shard in manifest["shards"]}
        strays = [f.name for f in files if f.parent == directory and f.name not in listed]
        line = f"{describe_text_source(manifest['settings'].get('source'))}, per {path}"
        if strays:
            line += f" ({len(strays)} matched file(s) not in its manifest, e.g. {strays[0]})"
        lines.append(line)
    return "; ".join(lines) or None
